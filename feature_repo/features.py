"""HLLM feature definitions: entities, Parquet sources, feature views, a push source.

Reads like the Feast local template, top-down. The Parquet files under data/ are written
by `hllm features build`; the item-embedding view is fed by the Item LLM (batch, and a
push source for cold-start items). Multi-scenario knowledge vectors (LLM4MSR) will get
their own views beside these.
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

# What serving reads for one request: the user's history plus item vectors.
recommend_v1 = FeatureService(name="recommend_v1", features=[user_history])
