"""HLLM feature definitions: entities, Parquet sources, feature views, a push source.

Reads like the Feast local template, top-down. The Parquet files under data/ are written
by `hllm features build`; the item-embedding view is fed by the Item LLM (batch, and a
push source for cold-start items). LLM4MSR's knowledge vectors (a frozen LLM's reading
of each scenario and of each user's cross-scenario behaviour) have their own views,
computed offline once and pushed by `hllm msr knowledge --feature-repo`.
"""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Array, Float32, Int64, String

# An item of the catalogue, keyed by its raw id (as in the interaction table).
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING,
              description="catalogue item")

# A user, keyed by the raw user id.
user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING,
              description="end user")

# Item text as the Item LLM reads it (prompt fields rendered as `field: value`);
# cold-start items arrive through the push source, together with their embedding.
item_text_source = FileSource(name="item_text_source", path="data/item_text.parquet",
                              timestamp_field="event_timestamp")
item_text_push = PushSource(name="item_text_push", batch_source=item_text_source)
item_text = FeatureView(
    name="item_text", entities=[item], ttl=timedelta(0), online=True, source=item_text_push,
    schema=[Field(name="text", dtype=String, description="rendered item text")])

# One vector per item from the Item LLM; cold-start items arrive through the push source.
item_embedding_source = FileSource(name="item_embedding_source",
                                   path="data/item_embedding.parquet",
                                   timestamp_field="event_timestamp")
item_embedding_push = PushSource(name="item_embedding_push", batch_source=item_embedding_source)
item_embedding = FeatureView(
    name="item_embedding", entities=[item], ttl=timedelta(0), online=True,
    source=item_embedding_push,
    schema=[Field(name="embedding", dtype=Array(Float32), description="Item LLM output")])

# The user's most recent item ids and their event times, as of each event: historical
# retrieval at time t returns the history known at t, never a later event.
user_history_source = FileSource(name="user_history_source", path="data/user_history.parquet",
                                 timestamp_field="event_timestamp")
user_history = FeatureView(
    name="user_history", entities=[user], ttl=timedelta(0), online=True,
    source=user_history_source,
    schema=[Field(name="item_ids", dtype=Array(String), description="last N items, oldest first"),
            Field(name="timestamps", dtype=Array(Int64), description="their epoch seconds"),
            Field(name="length", dtype=Int64)])

# The same histories as training reads them (hllm.feast_windows), offline only: the item ids
# joined by the unit separator "\x1f" in one string per row. Feast's file offline store
# (dask) pickles every object cell of a source while joining, and lists of ids pickle
# about 30x slower than strings: ml-100k's 2,305 windows read in 117 s from the list
# view and in 2.5 s from this one (2 busy cores).
user_history_training_source = FileSource(name="user_history_training_source",
                                          path="data/user_history_training.parquet",
                                          timestamp_field="event_timestamp")
user_history_training = FeatureView(
    name="user_history_training", entities=[user], ttl=timedelta(0), online=False,
    source=user_history_training_source,
    schema=[Field(name="item_ids", dtype=String,
                  description="last N item ids, oldest first, separated by \\x1f")])

# What serving reads for one request: the user's history plus item vectors.
recommend_v1 = FeatureService(name="recommend_v1", features=[user_history])

# A scenario of multi-scenario recommendation (LLM4MSR), keyed by its name.
scenario = Entity(name="scenario", join_keys=["scenario"], value_type=ValueType.STRING,
                  description="recommendation scenario (LLM4MSR)")

# Knowledge vectors from the frozen LLM: one per scenario, one per user. Written once
# offline (the LLM never runs at request time) through the push sources.
scenario_knowledge_source = FileSource(name="scenario_knowledge_source",
                                       path="data/scenario_knowledge.parquet",
                                       timestamp_field="event_timestamp")
scenario_knowledge_push = PushSource(name="scenario_knowledge_push",
                                     batch_source=scenario_knowledge_source)
scenario_knowledge = FeatureView(
    name="scenario_knowledge", entities=[scenario], ttl=timedelta(0), online=True,
    source=scenario_knowledge_push,
    schema=[Field(name="vector", dtype=Array(Float32), description="LLM hidden state")])

user_knowledge_source = FileSource(name="user_knowledge_source", path="data/user_knowledge.parquet",
                                   timestamp_field="event_timestamp")
user_knowledge_push = PushSource(name="user_knowledge_push", batch_source=user_knowledge_source)
user_knowledge = FeatureView(
    name="user_knowledge", entities=[user], ttl=timedelta(0), online=True,
    source=user_knowledge_push,
    schema=[Field(name="vector", dtype=Array(Float32), description="LLM hidden state"),
            Field(name="text", dtype=String, description="generated summary, when enabled")])
