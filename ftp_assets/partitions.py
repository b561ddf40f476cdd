from dagster import StaticPartitionsDefinition

from ftp_assets.domain.dataset import TASKS

# Each generation task has its own dataset, model, experiment and registry entry.
task_partitions = StaticPartitionsDefinition(list(TASKS))
