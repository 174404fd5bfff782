"""HLLM platform: hierarchical LLM recommenders, trained and shipped end to end."""
