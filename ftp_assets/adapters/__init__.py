"""The outside systems, one module each: the agent's posts database, our experiments table, the
MLflow registry and the fine-tuning providers. Adapters import domain rules only."""
