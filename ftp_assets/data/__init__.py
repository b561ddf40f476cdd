"""The data group: the posts that qualify (``engaged_posts``) and the training files made of them
(``training_jsonl``), with the checks that stop a bad file before any paid training."""

from dagster import Definitions

from ftp_assets.data.assets import engaged_posts, training_jsonl
from ftp_assets.data.checks import enough_examples, low_duplicate_rate, valid_format
from ftp_assets.settings import DeploymentSettings


def build_defs(settings: DeploymentSettings) -> Definitions:
    """The group's definitions (none depends on the settings yet; taken like the other groups')."""
    return Definitions(
        assets=[engaged_posts, training_jsonl],
        asset_checks=[enough_examples, valid_format, low_duplicate_rate],
    )
