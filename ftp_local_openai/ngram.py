"""A word trigram language model with interpolated backoff: what a local fine-tune trains.

Small and fast, yet a real model: it learns from the assistant messages, its cross-entropy on
held-out text falls as it sees more data, and sampling from it produces text in the style of the
data it was trained on.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Iterable

START, END = "<s>", "</s>"
# Interpolation weights of the orders: unseen word, unigram, bigram, trigram. A context never
# seen gives its weight to the others, so the mixture stays a probability distribution.
ORDER_WEIGHTS = (0.05, 0.15, 0.3, 0.5)
# Unseen words share the first weight as if the vocabulary had this many words; this is what
# keeps the loss finite on words the model never saw (the untrained loss is ln of it).
OPEN_VOCABULARY = 50_000

Context = tuple[str, ...]


def split_words(text: str) -> list[str]:
    """Words as whitespace-separated runs; a newline is a word of its own so layout survives."""
    return re.findall(r"\n|[^\s]+", text)


def join_words(words: Iterable[str]) -> str:
    text = " ".join(words)
    return text.replace(" \n ", "\n").replace(" \n", "\n").replace("\n ", "\n")


def _predictions(words: list[str]) -> Iterable[tuple[Context, str]]:
    """Each (two-word context, next word) pair of one sequence, ending with the END marker."""
    padded = [START, START, *words, END]
    for i in range(2, len(padded)):
        yield (padded[i - 2], padded[i - 1]), padded[i]


class NGramModel:
    def __init__(self) -> None:
        # Context of length 0, 1 or 2 -> counts of the word that followed it.
        self.next_words: dict[Context, Counter[str]] = {}
        self.totals: dict[Context, int] = {}
        self._by_frequency: list[str] | None = None

    def update(self, sequences: Iterable[list[str]]) -> None:
        for words in sequences:
            for (before, last), word in _predictions(words):
                for context in ((), (last,), (before, last)):
                    self.next_words.setdefault(context, Counter())[word] += 1
                    self.totals[context] = self.totals.get(context, 0) + 1
        self._by_frequency = None

    def _orders(self, context: Context) -> list[tuple[float, Context]]:
        """(weight, context) of each order this model has seen, longest first."""
        before, last = context
        orders = [(ORDER_WEIGHTS[3], (before, last)), (ORDER_WEIGHTS[2], (last,)), (ORDER_WEIGHTS[1], ())]
        return [(weight, order_context) for weight, order_context in orders if self.totals.get(order_context)]

    def probability(self, context: Context, word: str) -> float:
        orders = self._orders(context)
        mass = ORDER_WEIGHTS[0] / OPEN_VOCABULARY
        for weight, order_context in orders:
            mass += weight * self.next_words[order_context][word] / self.totals[order_context]
        return mass / (ORDER_WEIGHTS[0] + sum(weight for weight, _ in orders))

    def most_likely(self, context: Context) -> str | None:
        if not self.totals:
            return None
        candidates: dict[str, None] = {}
        for _, order_context in self._orders(context):
            if order_context:
                candidates.update(dict.fromkeys(self.next_words[order_context]))
        # Among the words never seen after this context, the most frequent one beats the rest,
        # so it is the only other candidate (scanning the vocabulary for every word is too slow).
        if self._by_frequency is None:
            self._by_frequency = [word for word, _ in self.next_words[()].most_common()]
        unseen_here = next((word for word in self._by_frequency if word not in candidates), None)
        if unseen_here is not None:
            candidates[unseen_here] = None
        return max(candidates, key=lambda word: self.probability(context, word))

    def evaluate(self, sequences: Iterable[list[str]]) -> tuple[float, float]:
        """Mean cross-entropy (nats per word) and next-word accuracy on the sequences."""
        nats, correct, count = 0.0, 0, 0
        for words in sequences:
            for context, word in _predictions(words):
                nats -= math.log(self.probability(context, word))
                correct += self.most_likely(context) == word
                count += 1
        return (nats / count, correct / count) if count else (0.0, 0.0)

    def generate(self, rng: random.Random, temperature: float, max_words: int) -> tuple[list[str], bool]:
        """Sampled words (greedy at temperature 0) and whether max_words cut the text short."""
        words: list[str] = []
        context = (START, START)
        while len(words) < max_words:
            word = self.most_likely(context) if temperature == 0 else self._sample(context, rng, temperature)
            if word is None or word == END:
                return words, False
            words.append(word)
            context = (context[1], word)
        return words, True

    def _sample(self, context: Context, rng: random.Random, temperature: float) -> str | None:
        # Sampling an order by its weight, then a word from that order, samples the mixture
        # (leaving out unseen words, which cannot be written).
        orders = self._orders(context)
        if not orders:
            return None
        _, order_context = rng.choices(orders, weights=[weight for weight, _ in orders])[0]
        counts = self.next_words[order_context]
        return rng.choices(list(counts), weights=[count ** (1 / temperature) for count in counts.values()])[0]

    def to_json(self) -> list:
        return [[list(context), dict(counts)] for context, counts in self.next_words.items()]

    @classmethod
    def from_json(cls, data: list) -> NGramModel:
        model = cls()
        for context, counts in data:
            model.next_words[tuple(context)] = Counter(counts)
            model.totals[tuple(context)] = sum(counts.values())
        return model
