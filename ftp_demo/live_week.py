"""The demo's audience simulation (a SIMULATION, clearly labelled): the agent writing posts during
a live experiment, and a seeded simulated audience reacting to them.

Each simulated post gets a persona and a topic, then for each task the routing function
(``Experiment.route``, over ``ftp_assets.domain.routing``, the one the real agent calls) picks the
champion or the challenger of that task's running experiment with the endpoint serving it, and
that model writes the hook or the body through chat completions at that endpoint, with the same
prompts the training data used. The audience model of
``ftp_demo.audience`` then draws impressions and engagements, and the post is written
to ``posts`` with the models that wrote it, as the agent would.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import numpy as np
import openai

from ftp_assets.adapters.experiments_store import Experiment
from ftp_assets.domain.dataset import REPLY_MAX_TOKENS, build_example, system_message
from ftp_assets.domain.routing import Route
from ftp_demo.audience import PERSONAS, simulate_reactions
from ftp_demo.posts import write_post


def _write(client: openai.OpenAI, model: str, task: str, persona: str, topic: str, hook: str | None, seed: int) -> str:
    messages = build_example(task, system_message(persona, task, {}), topic, hook or "", "")["messages"][:2]
    reply = client.chat.completions.create(model=model, messages=messages, seed=seed, max_tokens=REPLY_MAX_TOKENS[task])
    return (reply.choices[0].message.content or "").strip()


def simulate_posts(
    clients: Mapping[str, openai.OpenAI],
    experiments: Mapping[str, Experiment],
    *,
    start: datetime,
    end: datetime,
    posts: int,
    first_id: int,
    seed: int,
    workers: int = 1,
) -> list[dict]:
    """``posts`` simulated posts spread evenly over [start, end), routed through ``experiments``
    (one per task: "hook" and "body"); ``clients`` by endpoint name, as the agent holds them.

    With ``workers`` > 1 the posts are written concurrently (a post's body still follows its
    hook); the rows are the same whatever ``workers`` is: personas and topics are drawn first,
    reactions after, both in post order, and each request carries the post's id as its seed."""
    rng = np.random.default_rng(seed)
    step = (end - start) / posts
    drafts = []
    for index in range(posts):
        persona = PERSONAS[int(rng.integers(len(PERSONAS)))]
        topic, _, _ = write_post(rng, persona)
        drafts.append((first_id + index, persona, topic))

    def write(draft: tuple[int, str, str]) -> tuple[dict[str, Route], str, str]:
        post_id, persona, topic = draft
        routes = {task: experiment.route(post_id) for task, experiment in experiments.items()}
        hook_route, body_route = routes["hook"], routes["body"]
        hook = _write(clients[hook_route.endpoint], hook_route.model, "hook", persona, topic, None, seed=post_id)
        body = _write(clients[body_route.endpoint], body_route.model, "body", persona, topic, hook, seed=post_id)
        return routes, hook, body

    with ThreadPoolExecutor(max_workers=workers) as pool:
        written = list(pool.map(write, drafts))
    rows = []
    for index, ((post_id, persona, topic), (routes, hook, body)) in enumerate(zip(drafts, written, strict=True)):
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
                hook_model=routes["hook"].model,
                body_model=routes["body"].model,
            )
        )
    return rows
