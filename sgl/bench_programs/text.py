"""Synthetic, deterministic text for the workloads: seeded word sequences whose lengths are
given in tokens. Words are common lowercase English words that the Llama 3, Qwen and SmolLM2
tokenizers each spell as one token (with their leading space), so a passage asked for N tokens
tokenizes to about N; the driver reports the measured token counts, never these targets."""
from __future__ import annotations

import random

WORDS = (
    "the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by", "at",
    "from", "his", "her", "they", "this", "are", "had", "not", "but", "be", "have", "one",
    "all", "were", "which", "she", "their", "there", "been", "has", "more", "when", "who",
    "will", "would", "no", "out", "so", "what", "up", "its", "about", "into", "than", "them",
    "can", "only", "other", "new", "some", "could", "time", "these", "two", "may", "then",
    "first", "any", "like", "now", "my", "such", "make", "over", "our", "even", "most",
    "after", "also", "made", "many", "did", "before", "must", "through", "back", "years",
    "where", "much", "your", "way", "well", "down", "should", "because", "each", "just",
    "those", "people", "how", "too", "little", "state", "good", "very", "world", "still",
    "own", "see", "men", "work", "long", "get", "here", "between", "both", "life", "being",
    "under", "never", "day", "same", "another", "know", "while", "last", "might", "us",
    "great", "old", "year", "off", "come", "since", "against", "go", "came", "right", "used",
    "take", "three", "house", "hand", "place", "part", "small", "found", "water", "city",
    "river", "town", "road", "field", "light", "open", "green", "blue", "red", "white",
    "black", "north", "south", "east", "west", "early", "late", "high", "low", "young",
    "short", "full", "best", "market", "school", "garden", "bridge", "window", "table",
    "letter", "story", "music", "paper", "stone", "glass", "horse", "train", "ship", "farm",
    "bread", "tea", "book", "song", "game", "plan", "line", "wall", "door", "room", "hall",
    "hill", "lake", "tree", "rain", "snow", "wind", "fire", "sun", "moon", "star", "cloud",
    "sea", "land", "page", "word", "name", "number", "point", "group", "order", "power",
    "money", "board",
)
NAMES = ("Ada", "Ben", "Cara", "Dan", "Eva", "Finn", "Gus", "Hana", "Ivan", "June", "Kai", "Lena",
         "Milo", "Nina", "Omar", "Pia", "Quin", "Rosa", "Sam", "Tess", "Uma", "Vic", "Wren", "Yara")


def words(rng: random.Random, num_tokens: int) -> str:
    """About `num_tokens` tokens of space-separated words (no leading space)."""
    return " ".join(rng.choice(WORDS) for _ in range(max(num_tokens, 1)))


def sentences(rng: random.Random, num_tokens: int, sentence_len: int = 14) -> str:
    """Words cut into capitalised sentences of about `sentence_len` tokens (each '.' is one)."""
    out, left = [], max(num_tokens, 1)
    while left > 0:
        n = min(left, max(2, sentence_len + rng.randint(-4, 4)))
        text = words(rng, n - 1)
        out.append(text[0].upper() + text[1:] + ".")
        left -= n
    return " ".join(out)


def seeded(*keys: object) -> random.Random:
    """A generator keyed by the workload's seed and names (the same text in every run)."""
    return random.Random(":".join(str(k) for k in keys))
