"""A local OpenAI-compatible fine-tuning service, for laptops, tests and the demo.

It speaks, under ``/v1`` and in OpenAI's JSON shapes (so the official ``openai`` client parses
every answer into its own types), the part of OpenAI's API that the pipeline uses:

- files: upload (multipart, streamed to disk; over ``max_upload_bytes``, 64 MiB by default, a 413;
  a malformed form, a 400 saying why; purpose ``fine-tune`` needs a ``.jsonl`` name), list,
  retrieve, content;
- fine-tuning jobs: create (``model``, ``training_file``, ``validation_file``, supervised
  ``method`` or legacy ``hyperparameters``, ``suffix``, ``seed``, ``metadata``), retrieve, list
  (``after``/``limit`` cursor pages, ``metadata[key]=value`` filter), events (newest first, with
  metrics events per step), checkpoints (the last three epochs), cancel;
- chat completions and models (list, retrieve);
- a bearer key on every route: 401 with OpenAI's error body, which never quotes the key.

Jobs run on a worker thread, one at a time, through ``validating_files``, ``queued``, ``running``
and ``succeeded``/``failed``/``cancelled``. Files are checked with OpenAI's chat format rules
(:mod:`ftp_assets.domain.chat_format`) and a minimum of 10 training examples; a broken file fails
the job with ``invalid_training_file`` (or ``invalid_validation_file``, ``invalid_n_examples``)
and a message naming the line and the rule. Training is real but small: a word trigram model of
the assistant messages, trained batch by batch (train loss is measured on each batch before the
model sees it, so the first step shows the untrained loss of about 10.8; validation loss on a
batch of the validation file; both in nats per word), a CSV of the step metrics as the job's
result file, and ``trained_tokens`` counted in cl100k tokens times the epochs. "auto"
hyperparameters resolve to OpenAI's cookbook rule for ``n_epochs`` (3, more for small sets),
a ``batch_size`` giving about 25 steps an epoch, and a ``learning_rate_multiplier`` of 1.8. The ``fine_tuned_model``
(``ft:<base>:local:<suffix>:<id>``) samples that trigram model, deterministically for a request
``seed`` and prompt; base models answer with fixed generic text. Everything lives as JSON under
the state directory; a restarted service keeps every file and job and finishes the jobs it had in
flight, resuming their training where it stopped.

Faults can be switched on while it runs, from Python (``RunningService.faults``:
``rate_limit_next(n, retry_after)``, ``fail_next_responses(n)``, ``set_latency(seconds)``,
``fail_next_job()``, ``drop_metadata(enabled)``, ``clear()``) or over HTTP with the same key
(``POST /_admin/faults`` with ``{"rate_limit_next": 2, "retry_after": 1.5, "fail_next_responses":
0, "latency_seconds": 0.1, "fail_next_job": true, "drop_metadata": true}``, any subset; ``GET``
shows them, ``DELETE`` clears them): 429s with ``retry-after``/``retry-after-ms``, 500s, added
latency, a next job that fails halfway through its steps with a ``server_error``, and job
``metadata`` ignored on create and list, as some OpenAI-compatible APIs do.

Injected latency is at most 30 s, and a shutdown cuts it short. ``ftp-assets local-openai`` serves with
the key of ``--api-key`` or ``FTP_LOCAL_OPENAI_API_KEY`` (:data:`API_KEY_ENV`), and with the
well-known local default on a loopback host only.

Not emulated: DPO and reinforcement methods, integrations (W&B), streaming, tool calls, file
deletion and expiry, model deletion, serving checkpoint models other than the final one,
per-example token limits, moderation of training data, billing, rate limits of its own, and
OpenAI's exact loss values (its losses are per token of a neural model; these are per word of a
trigram model). ``learning_rate_multiplier`` is recorded but a count-based model has no learning
rate. Jobs run one after another, not in parallel.
"""

from .app import DEFAULT_MAX_UPLOAD_BYTES, create_app
from .faults import FaultController
from .server import API_KEY_ENV, RunningService, is_loopback, running_service, serve

__all__ = [
    "API_KEY_ENV",
    "DEFAULT_MAX_UPLOAD_BYTES",
    "FaultController",
    "RunningService",
    "create_app",
    "is_loopback",
    "running_service",
    "serve",
]
