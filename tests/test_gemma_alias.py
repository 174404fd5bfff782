"""Packaged GGUF models: chunks joined and checked against the listed sha256, and the
`gemma3-270m` alias (Gemma 3 270M base from the opt-in `make gemma` packages).

The join, the checksum and the error messages run on fake chunk packages written
into tmp_path, so CI needs nothing installed; tests of the real model skip unless
`make gemma` has run (the first one converts it once, ~1.5 min on 2 cores).
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import re
import shutil
from pathlib import Path

import pytest
import torch

from helpers import ROOT
from hllm.config import GEMMA3, ItemLLMConfig
from hllm.errors import ConfigError
from hllm.models.pretrained import (GEMMA3_270M, PackagedModel, decoder_layers, join_parts,
                                    listed_sha256, load_backbone, packaged_files,
                                    packaged_model_dir, resolve_model_dir)

# Three chunks of different sizes and contents, so a swapped order changes the hash.
CHUNKS = [b"GGUF" + bytes(range(256)) * 4, b"middle chunk\n" * 3, b"\x00tail"]
FAKE = PackagedModel(
    name="fake-llm", aliases=frozenset({"fake-llm"}), gguf="fake.gguf",
    parts=tuple((f"fake_llm_part{i + 1}", f"data/fake.gguf.part{i:02d}") for i in range(3)),
    install="make fake", sha256sums=("fake_llm", "data/SHA256SUMS"))
GEMMA_INSTALLED = importlib.util.find_spec(GEMMA3_270M.sha256sums[0]) is not None
needs_gemma = pytest.mark.skipif(not GEMMA_INSTALLED, reason="Gemma packages absent: make gemma")


def write_package(site: Path, module: str, rel: str, data: bytes) -> Path:
    """A minimal installed package `module` holding `rel`, as pip would lay it out."""
    (site / module).mkdir(exist_ok=True)
    (site / module / "__init__.py").write_text("raise ImportError('data only: never imported')\n")
    path = site / module / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def fake_site(tmp_path, monkeypatch) -> Path:
    """FAKE's three chunk packages and its sha256 package, importable from tmp_path/site."""
    site = tmp_path / "site"
    site.mkdir()
    for (module, rel), data in zip(FAKE.parts, CHUNKS):
        write_package(site, module, rel, data)
    digest = hashlib.sha256(b"".join(CHUNKS)).hexdigest()
    write_package(site, "fake_llm", "data/SHA256SUMS", f"{digest}  fake.gguf\n".encode())
    monkeypatch.syspath_prepend(str(site))
    return site


@pytest.fixture
def empty_cache(tmp_path, monkeypatch) -> Path:
    """A cache of our own (conftest's shares models/ with other tests), to see leftovers."""
    cache = tmp_path / "own-cache"
    monkeypatch.setenv("HLLM_CACHE", str(cache))
    return cache


def test_chunks_join_in_order_and_match_listed_sha256(fake_site, tmp_path):
    parts, sums = packaged_files(FAKE)
    assert [p.name for p in parts] == ["fake.gguf.part00", "fake.gguf.part01", "fake.gguf.part02"]
    expected = listed_sha256(sums, "fake.gguf")
    joined = join_parts(parts, tmp_path / "out" / "fake.gguf", expected, sums)
    assert joined.read_bytes() == b"".join(CHUNKS)
    # The same chunks in another order are a different file: the check catches it.
    with pytest.raises(ConfigError, match="sha256"):
        join_parts(parts[::-1], tmp_path / "out" / "swapped.gguf", expected, sums)


def test_corrupt_chunk_names_file_and_both_hashes_and_leaves_no_files(fake_site, empty_cache):
    part = fake_site / FAKE.parts[1][0] / FAKE.parts[1][1]
    bad = bytearray(CHUNKS[1])
    bad[5] ^= 0xFF  # one flipped byte in the middle chunk
    part.write_bytes(bytes(bad))
    listed = hashlib.sha256(b"".join(CHUNKS)).hexdigest()
    actual = hashlib.sha256(CHUNKS[0] + bytes(bad) + CHUNKS[2]).hexdigest()
    with pytest.raises(ConfigError) as err:
        packaged_model_dir(FAKE)  # fails while joining, before transformers is involved
    message = str(err.value)
    assert "fake.gguf" in message and "SHA256SUMS" in message
    assert actual in message and listed in message
    # The joined temp file and its temp dir are gone; no half-made model dir either.
    # nothing but the conversion's lock file (flock; it only ever holds a pid)
    assert [p for p in (empty_cache / "models").iterdir() if p.suffix != ".lock"] == []


def test_missing_chunk_package_names_it_and_the_install_command(fake_site, empty_cache):
    shutil.rmtree(fake_site / "fake_llm_part3")
    importlib.invalidate_caches()  # find_spec must see the directory listing change
    with pytest.raises(ConfigError, match=r"fake-llm model needs the packages fake-llm-part3, "
                                          r"which are not installed: make fake$"):
        packaged_model_dir(FAKE)
    assert not (empty_cache / "models").exists()  # nothing written before the check


@pytest.mark.skipif(GEMMA_INSTALLED, reason="the Gemma packages are installed here")
def test_gemma_alias_without_packages_says_make_gemma(empty_cache):
    with pytest.raises(ConfigError) as err:
        resolve_model_dir(GEMMA3)
    message = str(err.value)
    assert message.endswith("which are not installed: make gemma")
    for module, _ in [*GEMMA3_270M.parts, GEMMA3_270M.sha256sums]:
        assert module.replace("_", "-") in message


def test_make_gemma_installs_exactly_the_table_packages_pinned():
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\ngemma: $(STAMP)\n", 1)[1].split("\n\n", 1)[0]
    version = re.search(r"^GEMMA_VERSION := (\S+)$", makefile, re.M).group(1)
    installed = set(re.findall(r"(gemma3-[\w-]+)==\$\(GEMMA_VERSION\)", recipe))
    wanted = {m.replace("_", "-") for m, _ in [*GEMMA3_270M.parts, GEMMA3_270M.sha256sums]}
    assert "--no-deps" in recipe and installed == wanted and version == "1.0.0"
    assert "gemma3" not in makefile.split("\n$(STAMP):", 1)[1].split("\n\n", 1)[0]  # opt-in only


# ---------------------------------------------------------------- the real model (make gemma)

@needs_gemma
def test_real_chunks_match_the_listed_sha256(tmp_path):
    parts, sums = packaged_files(GEMMA3_270M)
    joined = join_parts(parts, tmp_path / GEMMA3_270M.gguf,
                        listed_sha256(sums, GEMMA3_270M.gguf), sums)
    assert joined.stat().st_size == sum(p.stat().st_size for p in parts)


@needs_gemma
def test_gemma_backbone_tokenizer_and_item_embeddings():
    from hllm.models.item_llm import ItemLLM

    backbone = load_backbone(GEMMA3, "pretrained", {})
    assert backbone.config.model_type == "gemma3_text" and backbone.config.hidden_size == 640
    assert decoder_layers(backbone) is backbone.layers and len(backbone.layers) == 18
    # Gemma scales token embeddings by sqrt(hidden) inside the embedding module; the scale
    # is a non-saved buffer, so check it was rebuilt on load.
    assert backbone.get_input_embeddings().embed_scale.item() == pytest.approx(math.sqrt(640))
    del backbone

    model = ItemLLM(ItemLLMConfig(path=GEMMA3, pooling="mean", trainable="frozen")).eval()
    assert model.frozen and model.hidden_size == 640
    texts = [{"title": "Toy Story (1995)", "genre": "Animation Children's Comedy"},
             {"title": "GoldenEye (1995)", "genre": "Action Adventure Thriller"}, {"title": "Heat"}]
    tokens = model.tokenize(texts)
    assert tokens[0][0] == model.tokenizer.bos_id == 2  # <bos>, as Gemma expects
    assert model.tokenizer.tok.decode(tokens[2]) == "<bos>" + model.cfg.prompt + "title: Heat"
    with torch.no_grad():
        packed = model(model.make_batch(tokens, packed=True))
        padded = model(model.make_batch(tokens, packed=False))
        # ItemLLM feeds inputs_embeds from get_input_embeddings(); the scaled module makes
        # that the same as the model's own input_ids path (seen: 1e-6 on values ~30).
        ref = model.backbone(input_ids=torch.tensor(tokens[:1]), use_cache=False)
    assert packed.shape == (3, 640) and torch.isfinite(packed).all()
    torch.testing.assert_close(padded[0], ref.last_hidden_state[0].mean(0), rtol=1e-5, atol=1e-4)
    assert (packed - padded).abs().max().item() <= 1e-5 * packed.abs().max().item()
    assert not torch.allclose(packed[0], packed[1])
