"""Serving the self-hosted LoRA adapters by their model names.

The trainer (ftp_trainer) leaves each adapter at ``<adapters root>/<task>/<job_id>/``; the agent
calls it ``threads-<task>-<job_id>``. :mod:`ftp_serving.layout` maps a name to a verified local
adapter folder (standard library only); :mod:`ftp_serving.vllm_plugin` hands it to vLLM in
production; :mod:`ftp_serving.server` serves the same names on a CPU behind the OpenAI chat API.
"""
