"""The HLLM training pipeline (KFP v2): definition, compile/run/submit CLI, local driver."""
