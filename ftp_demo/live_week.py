"""The demo's audience simulation (a SIMULATION, clearly labelled): the agent writing posts during
a live experiment, and a seeded simulated audience reacting to them.

Each simulated post gets a persona and a topic, then for each task the routing function
(``ftp_assets.domain.routing.assign_arm``, the one the real agent calls) picks the champion or
the challenger of that task's running experiment, and that model writes the hook or the body
through chat completions, with the same prompts the training data used. The audience model of
``ftp_demo.audience`` then draws impressions and engagements, and the post is written
to ``posts`` with the models that wrote it, as the agent would.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import numpy as np
import openai

from ftp_assets.adapters.experiments_store import Experiment
from ftp_assets.domain.dataset import build_example, system_message
from ftp_assets.domain.routing import assign_arm
from ftp_demo.audience import PERSONAS, simulate_reactions
from ftp_demo.posts import write_post

MAX_TOKENS = {"hook": 40, "body": 120}


def _write(client: openai.OpenAI, model: str, task: str, persona: str, topic: str, hook: str | None, seed: int) -> str:
    messages = build_example(task, system_message(persona, task, {}), topic, hook or "", "")["messages"][:2]
    reply = client.chat.completions.create(model=model, messages=messages, seed=seed, max_tokens=MAX_TOKENS[task])
    return (reply.choices[0].message.content or "").strip()


def simulate_posts(
    client: openai.OpenAI,
    experiments: Mapping[str, Experiment],
    *,
    start: datetime,
    end: datetime,
    posts: int,
    first_id: int,
    seed: int,
) -> list[dict]:
    """``posts`` simulated posts spread evenly over [start, end), routed through ``experiments``
    (one per task: "hook" and "body")."""
    rng = np.random.default_rng(seed)
    step = (end - start) / posts
    rows = []
    for index in range(posts):
        post_id = first_id + index
        persona = PERSONAS[int(rng.integers(len(PERSONAS)))]
        topic, _, _ = write_post(rng, persona)
        models = {
            task: experiment.challenger_model
            if assign_arm(experiment.experiment_id, post_id, experiment.challenger_share) == "challenger"
            else experiment.champion_model
            for task, experiment in experiments.items()
        }
        hook = _write(client, models["hook"], "hook", persona, topic, None, seed=post_id)
        body = _write(client, models["body"], "body", persona, topic, hook, seed=post_id)
        impressions, engagements = simulate_reactions(rng, persona, hook, body)
        rows.append(
            dict(
                id=post_id,
                persona_id=persona,
                original_input=topic,
                hook=hook,
                body=body,
                created_at=start + step * index,
                impressions=impressions,
                engagements=engagements,
                hook_model=models["hook"],
                body_model=models["body"],
            )
        )
    return rows
