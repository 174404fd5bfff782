"""LLM4MSR: multi-scenario CTR with frozen-LLM knowledge and hierarchical meta networks.

Modules, in the order data flows through them:
  data.py       ml-100k (or any table with scenario + label) -> time-split CTR rows
  knowledge.py  scenario / user prompts -> frozen causal LM -> cached knowledge vectors
  backbones.py  STAR, MMoE, Shared-Bottom, PLE: features -> (representation h, logit)
  meta.py       hierarchical meta networks refining h; the LLM4MSR wrapper model
  train.py      AdamW + BCE with early stopping on validation AUC; backbone vs +LLM4MSR
  evaluate.py   AUC (ties handled) and logloss, per scenario and overall
  config.py     MSRConfig and its presets
"""
