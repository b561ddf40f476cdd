"""What each asset does, as plain functions the assets call: no Dagster here, so each step can be
read, tested and reused alone."""
