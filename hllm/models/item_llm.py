"""Item LLM: one item's text -> one embedding.

Wraps any Hugging Face base model (decoder-only Llama/Qwen/Mistral, or a BERT-style
encoder) loaded from a local directory, s3:// prefix or a tiny config. With
`pooling="item_token"` (the HLLM default) a learned vector is placed in an extra
slot after the text and the last hidden state at that slot is the item embedding;
with `pooling="mean"` the hidden states of the item's tokens are averaged.
"""

from __future__ import annotations

import inspect
import logging
from typing import Sequence

import torch
from torch import nn

from hllm.config import ItemLLMConfig
from hllm.data.item_text import (ByteTokenizer, HFTokenizer, ItemBatch, packed_batch,
                                 padded_batch, token_budget_chunks, tokenize_items)
from hllm.errors import ConfigError
from hllm.progress import Progress
from hllm.models.pretrained import (decoder_layers, enable_checkpointing, flash_attn_available,
                                    load_backbone, resolve_model_dir)

log = logging.getLogger(__name__)

# Bidirectional encoders: attention is full within an item, not causal.
ENCODER_TYPES = {"bert", "roberta", "xlm-roberta", "distilbert", "electra", "mpnet",
                 "deberta", "deberta-v2", "modernbert"}


class ItemLLM(nn.Module):
    def __init__(self, cfg: ItemLLMConfig, attn_implementation: str = "sdpa"):
        """`attn_implementation`: sdpa | eager | flash_attention_2, or "flash-if-packed":
        flash_attention_2 (varlen over the packed rows, no dense row x row mask) when the
        model is a causal decoder and batches are packed, sdpa otherwise."""
        super().__init__()
        if cfg.pooling not in ("item_token", "mean"):
            raise ConfigError(f"item_llm.pooling must be item_token or mean, got {cfg.pooling!r}")
        self.cfg = cfg
        wanted = "sdpa" if attn_implementation == "flash-if-packed" else attn_implementation
        self.backbone = load_backbone(cfg.path, cfg.init, cfg.arch,
                                      trust_remote_code=cfg.trust_remote_code,
                                      attn_implementation=wanted)
        config = self.backbone.config
        self.hidden_size: int = config.hidden_size
        self.causal = config.model_type not in ENCODER_TYPES
        if (attn_implementation == "flash-if-packed" and self.causal and cfg.packed
                and flash_attn_available()):
            # Packed rows restart position_ids per item; transformers turns that into
            # varlen flash attention (cu_seqlens), so no item attends to its row neighbours.
            self.backbone.set_attn_implementation("flash_attention_2")
        self.tokenizer = self._tokenizer()
        # The [ITEM] slot's input embedding: not a vocabulary entry, init N(0, 0.02) as in HLLM.
        self.item_token = (nn.Parameter(torch.randn(1, self.hidden_size) * 0.02)
                           if cfg.pooling == "item_token" else None)
        if cfg.gradient_checkpointing:
            enable_checkpointing(self.backbone)
        self._set_trainable(cfg.trainable, cfg.top_k_layers)
        # top-k: the [ITEM] slot enters at the first trainable layer (see
        # hllm.models.prefix_cache), so no gradient ever runs through the frozen layers.
        self.slot_layer: int | None = None
        self._slots: torch.Tensor | None = None  # the current batch's slot positions
        if cfg.trainable == "top-k" and self.item_token is not None:
            layers = decoder_layers(self.backbone)
            self.slot_layer = len(layers) - cfg.top_k_layers
            layers[self.slot_layer].register_forward_pre_hook(self._inject_slot, with_kwargs=True)

    # ------------------------------------------------------------ setup
    def _tokenizer(self):
        if self.cfg.tokenizer == "bytes":
            return ByteTokenizer()
        if self.cfg.tokenizer != "auto":
            return HFTokenizer(resolve_model_dir(self.cfg.tokenizer), self.cfg.trust_remote_code)
        if self.cfg.path is None:
            raise ConfigError("item_llm without a path needs tokenizer: bytes, or a tokenizer path")
        return HFTokenizer(resolve_model_dir(self.cfg.path), self.cfg.trust_remote_code)

    def _set_trainable(self, mode: str, top_k: int) -> None:
        if mode not in ("full", "frozen", "top-k"):
            raise ConfigError(f"item_llm.trainable must be full, frozen or top-k, got {mode!r}")
        if mode == "full":
            return
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        if mode == "frozen":
            if self.item_token is not None:
                self.item_token.requires_grad_(False)
            return
        layers = decoder_layers(self.backbone, "item_llm.trainable=top-k")
        if not 0 < top_k <= len(layers):
            raise ConfigError(f"item_llm.top_k_layers={top_k} but the model has {len(layers)} layers")
        for layer in layers[-top_k:]:
            for p in layer.parameters():
                p.requires_grad_(True)
        norm = getattr(self.backbone, "norm", None)  # final norm of decoder models
        if norm is not None:
            for p in norm.parameters():
                p.requires_grad_(True)

    @property
    def frozen(self) -> bool:
        return not any(p.requires_grad for p in self.parameters())

    # ------------------------------------------------------------ batching
    def tokenize(self, texts: Sequence[dict[str, str]]) -> list[list[int]]:
        prompt_len = len(self.tokenizer.encode(self.cfg.prompt))
        if prompt_len >= self.cfg.max_text_len:
            raise ConfigError(f"item_llm.max_text_len={self.cfg.max_text_len} leaves no room for item "
                              f"text after the {prompt_len}-token prompt; raise it or shorten the prompt")
        return tokenize_items(texts, self.tokenizer, prompt=self.cfg.prompt,
                              separator=self.cfg.field_separator, max_len=self.cfg.max_text_len)

    def make_batch(self, token_ids: Sequence[Sequence[int]], packed: bool | None = None) -> ItemBatch:
        packed = self.cfg.packed if packed is None else packed
        slot = self.item_token is not None
        if packed:
            return packed_batch(token_ids, self.tokenizer.pad_id, slot, pack_len=self.cfg.pack_len)
        return padded_batch(token_ids, self.tokenizer.pad_id, slot)

    # ------------------------------------------------------------ forward
    def _inject_slot(self, module, args, kwargs):
        """Forward pre-hook of the first trainable layer: the [ITEM] vector goes in here."""
        if self._slots is None:  # the frozen layers alone (prefix states): no slot
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        slot = self.item_token.to(hidden.dtype).expand_as(hidden)
        hidden = torch.where(self._slots[..., None], slot, hidden)
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    def forward(self, batch: ItemBatch) -> torch.Tensor:
        """(n, hidden) embeddings of the batch's items, in batch order."""
        embeds = self.backbone.get_input_embeddings()(batch.input_ids)  # (R, T, D)
        if self.item_token is not None and self.slot_layer is None:
            slot = self.item_token.to(embeds.dtype).expand_as(embeds)
            embeds = torch.where(batch.item_slots[..., None], slot, embeds)
        self._slots = batch.item_slots
        try:
            out = self._backbone_forward(batch, embeds)
        finally:
            self._slots = None
        hidden = out.last_hidden_state.flatten(0, 1)  # (R*T, D)
        if self.item_token is not None:
            return hidden[batch.readout]
        seg = batch.segment_ids.flatten()
        keep = seg >= 0
        sums = hidden.new_zeros(batch.num_items, hidden.size(-1)).index_add_(0, seg[keep], hidden[keep])
        counts = torch.bincount(seg[keep], minlength=batch.num_items).clamp_min(1)
        return sums / counts[:, None].to(sums.dtype)

    def _backbone_forward(self, batch: ItemBatch, embeds: torch.Tensor):
        real = batch.segment_ids >= 0
        if self.causal and batch.packed:
            # No mask + restarting position ids: transformers builds a block-diagonal causal
            # mask (sdpa/eager) or runs varlen flash attention, so items never see each other.
            out = self.backbone(inputs_embeds=embeds, position_ids=batch.position_ids, use_cache=False)
        elif self.causal:
            out = self.backbone(inputs_embeds=embeds, attention_mask=real.long(),
                                position_ids=batch.position_ids, use_cache=False)
        else:
            mask = batch.attention_mask_4d(causal=False) if batch.packed else real.long()
            out = self.backbone(inputs_embeds=embeds, attention_mask=mask,
                                position_ids=torch.where(real, batch.position_ids, 0))
        return out

    def forward_from_prefix(self, states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(n, hidden) embeddings from cached inputs of the first trainable layer.

        states: (n, T, D) right-padded text-token states (PrefixStates.gather), lengths: (n,).
        Equals `forward` on the same items (tests/test_prefix_cache.py) while running only
        the trainable layers, and in the last one only the [ITEM] position's query.
        """
        from hllm.models.prefix_cache import causal_mask, slot_only_layer, supports_slot_only

        layers = list(decoder_layers(self.backbone))[-self.cfg.top_k_layers:]
        n, width, _ = states.shape
        rows = torch.arange(n, device=states.device)
        slotted = self.item_token is not None
        if slotted:  # append the learned [ITEM] vector right after each item's text
            states = torch.cat([states, states.new_zeros(n, 1, states.size(-1))], 1)
            width += 1
            states = states.index_put((rows, lengths), self.item_token.to(states.dtype).expand(n, -1))
        positions = torch.arange(width, device=states.device).expand(n, width)
        fast = slotted and supports_slot_only(layers[-1], self.backbone.config.model_type)
        first = self.backbone.config.num_hidden_layers - len(layers)
        for i, layer in enumerate(layers[:-1] if fast else layers):
            mask = causal_mask(n, width, states.dtype, states.device, self._window(first + i))
            states = layer(states, attention_mask=mask, position_ids=positions,
                           position_embeddings=self._rotary(states, positions, first + i))
        norm = getattr(self.backbone, "norm", nn.Identity())
        if fast:
            last = first + len(layers) - 1
            cos, sin = self._rotary(states, positions, last)
            return norm(slot_only_layer(layers[-1], states, lengths, cos, sin, self._window(last)))
        states = norm(states)
        if slotted:
            return states[rows, lengths]
        keep = (torch.arange(width, device=states.device)[None, :] < lengths[:, None]).to(states.dtype)
        return (states * keep[..., None]).sum(1) / lengths.clamp_min(1)[:, None].to(states.dtype)

    def _window(self, layer: int) -> int | None:
        """The sliding window of a sliding-attention layer (Gemma 3's local layers), else None."""
        config = self.backbone.config
        types = getattr(config, "layer_types", None)
        if types and types[layer] == "sliding_attention":
            return getattr(config, "sliding_window", None)
        return None

    def _rotary(self, states: torch.Tensor, positions: torch.Tensor, layer: int):
        """(cos, sin) for one layer; Gemma 3 has local and global rotary tables by layer type."""
        rotary = self.backbone.rotary_emb
        types = getattr(self.backbone.config, "layer_types", None)
        if types and "layer_type" in inspect.signature(rotary.forward).parameters:
            return rotary(states, positions, types[layer])
        return rotary(states, positions)

    @torch.no_grad()
    def encode_all(self, token_ids: Sequence[Sequence[int]], *, device: torch.device,
                   packed: bool | None = None, progress: bool | None = None) -> torch.Tensor:
        """Embed every item once (no grad), in chunks of ~batch_tokens tokens: (n, hidden)."""
        was_training = self.training
        self.eval()
        order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))
        lengths = [len(token_ids[i]) + 1 for i in order]
        out = torch.empty(len(token_ids), self.hidden_size)
        with Progress(len(order), "embed items", "item", bar=progress) as shown:
            for chunk in token_budget_chunks(lengths, self.cfg.batch_tokens):
                ids = [order[c] for c in chunk]
                batch = self.make_batch([token_ids[i] for i in ids], packed).to(device)
                out[ids] = self(batch).float().cpu()
                shown.update(len(ids))
        self.train(was_training)
        return out

