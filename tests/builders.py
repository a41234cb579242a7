"""Tiny real models the tests build themselves (random weights, real architecture)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

WORDS = [
    "the",
    "a",
    "man",
    "woman",
    "child",
    "dog",
    "cat",
    "bird",
    "plays",
    "runs",
    "eats",
    "sleeps",
    "reads",
    "writes",
    "sings",
    "jumps",
    "guitar",
    "piano",
    "ball",
    "book",
    "song",
    "food",
    "water",
    "park",
    "house",
    "street",
    "car",
    "train",
    "plane",
    "sky",
    "sun",
    "red",
    "blue",
    "green",
    "small",
    "big",
    "old",
    "young",
    "happy",
    "sad",
    "quickly",
    "slowly",
    "today",
    "yesterday",
    "in",
    "on",
    "at",
    "with",
    "and",
    "is",
    "are",
    "was",
    "were",
    "playing",
    "running",
    "eating",
    "reading",
]


def _tiny_tokenizer_and_config(directory: Path, hidden: int, layers: int) -> Any:
    """The tiny WordPiece tokenizer (saved into directory) and a BERT config sized for it."""
    from transformers import BertConfig, BertTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    vocab = specials + list(WORDS) + letters + ["##" + c for c in letters] + list(".,!?;:'\"-")
    tokens = list(dict.fromkeys(vocab))
    tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=True)
    if len(tokenizer) != len(tokens) or tokenizer.unk_token_id in tokenizer("the man")["input_ids"]:
        raise RuntimeError("the tiny tokenizer did not take its vocabulary")
    tokenizer.save_pretrained(str(directory))
    return BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )


def write_tiny_checkpoint(
    directory: Path, seed: int = 0, pooler: bool = True, hidden: int = 32, layers: int = 2
) -> Path:
    """A 2-layer BERT with a small WordPiece vocab, saved as a Hugging Face checkpoint."""
    import torch
    from transformers import BertModel

    config = _tiny_tokenizer_and_config(directory, hidden, layers)
    torch.manual_seed(seed)
    model = BertModel(config, add_pooling_layer=pooler)
    model.save_pretrained(str(directory))
    return directory


def write_tiny_cross_checkpoint(
    directory: Path,
    seed: int = 0,
    num_labels: int = 1,
    card: dict[str, Any] | None = None,
    hidden: int = 32,
    layers: int = 2,
) -> Path:
    """A 2-layer `BertForSequenceClassification` (random weights, dropout configured but off in
    eval) in the format `simsvc finetune --objective cross` writes, card.json included."""
    import json

    import torch
    from transformers import BertForSequenceClassification

    config = _tiny_tokenizer_and_config(directory, hidden, layers)
    config.num_labels = num_labels
    # At BERT's usual 0.02 the [CLS] vector of a random model barely moves between inputs;
    # wider weights give logits that differ from pair to pair, as a trained model's do.
    config.initializer_range = 0.2
    if num_labels == 2:
        config.id2label = {0: "dissimilar", 1: "similar"}
        config.label2id = {"dissimilar": 0, "similar": 1}
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    model.save_pretrained(str(directory))
    if card is not None:
        (directory / "card.json").write_text(json.dumps(card))
    return directory


def sentences(n: int, seed: int = 0) -> list[str]:
    """Random short sentences over the tiny vocabulary."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 14))) for _ in range(n)]


def write_sts_file(path: Path, n: int, seed: int = 0) -> Path:
    """An STS-B style TSV whose gold score grows with word overlap."""
    rng = random.Random(seed)
    lines = ["score\tsentence1\tsentence2\tgenre\tdataset\tyear\tsid"]
    for i, a in enumerate(sentences(n, seed)):
        words = a.split()
        keep = rng.randint(0, len(words))
        b_words = words[:keep] + [rng.choice(WORDS) for _ in range(len(words) - keep)]
        rng.shuffle(b_words)
        score = 5.0 * keep / len(words)
        lines.append(f"{score:.3f}\t{a}\t{' '.join(b_words)}\tmain\tsynthetic\t2024\t{i:04d}")
    path.write_text("\n".join(lines) + "\n")
    return path
