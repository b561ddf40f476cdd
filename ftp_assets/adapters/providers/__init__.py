"""Fine-tuning providers behind one small interface (see :mod:`ftp_assets.adapters.providers.base`)."""

from ftp_assets.adapters.providers.base import (
    BudgetExceeded,
    FineTuneJob,
    FineTuneRequest,
    FineTuneResult,
    FineTuningError,
    FineTuningFailed,
    FineTuningProvider,
    FineTuningTimeout,
    JobEvent,
    ProviderUnavailable,
    StepMetrics,
    Submission,
)
from ftp_assets.adapters.providers.openai_provider import OpenAIFineTuningProvider
from ftp_assets.adapters.providers.runner import run_fine_tune

__all__ = [
    "BudgetExceeded",
    "FineTuneJob",
    "FineTuneRequest",
    "FineTuneResult",
    "FineTuningError",
    "FineTuningFailed",
    "FineTuningProvider",
    "FineTuningTimeout",
    "JobEvent",
    "OpenAIFineTuningProvider",
    "ProviderUnavailable",
    "StepMetrics",
    "Submission",
    "run_fine_tune",
]
