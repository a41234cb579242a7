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


UNIGRAM_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
"""XLM-R's special tokens and ids: <s> 0, <pad> 1, </s> 2, <unk> 3."""

HAN = "一个男人在弹吉他女孩跑步狗吃东西天空很蓝今天下雨了"


def write_tiny_unigram_tokenizer(directory: Path, vocab_size: int = 160) -> Any:
    """A SentencePiece-style Unigram tokenizer trained in memory on the tiny sentences (and a
    few Chinese ones), saved as tokenizer.json only (no vocab.txt), with XLM-R's specials,
    NFKC, Metaspace and the `<s> A </s></s> B </s>` pair template, all type ids 0."""
    import json

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import UnigramTrainer

    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    chinese = ["".join(rng.choice(HAN) for _ in range(rng.randint(3, 12))) for _ in range(60)]
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = UnigramTrainer(
        vocab_size=vocab_size, special_tokens=UNIGRAM_SPECIALS, unk_token="<unk>"
    )
    tok.train_from_iterator(sentences(300, seed=3) + chinese, trainer)
    if [tok.token_to_id(t) for t in UNIGRAM_SPECIALS] != [0, 1, 2, 3]:
        raise RuntimeError("the tiny Unigram tokenizer did not put the specials first")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    tok.save(str(directory / "tokenizer.json"))
    specials = {"bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>"}
    config = {"tokenizer_class": "XLMRobertaTokenizer", "model_max_length": 128, **specials}
    config.update({"unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<unk>"})
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return tok


def write_tiny_unigram_checkpoint(
    directory: Path,
    seed: int = 0,
    hidden: int = 32,
    layers: int = 2,
    num_labels: int | None = None,
    prompts: dict[str, str] | None = None,
) -> Path:
    """A 2-layer BERT over a tiny Unigram tokenizer.json (no vocab.txt), one token type as
    XLM-R-vocabulary models have; a sequence classifier when `num_labels` is given. With
    `prompts`, a config_sentence_transformers.json naming them."""
    import json

    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    tok = write_tiny_unigram_tokenizer(directory)
    config = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden,
        max_position_embeddings=130,
        type_vocab_size=1,
        pad_token_id=1,
        initializer_range=0.2 if num_labels else 0.02,
    )
    torch.manual_seed(seed)
    if num_labels is None:
        model: Any = BertModel(config)
    else:
        config.num_labels = num_labels
        model = BertForSequenceClassification(config)
    model.save_pretrained(str(directory))
    if prompts is not None:
        st = {"prompts": prompts, "default_prompt_name": None, "similarity_fn_name": "cosine"}
        (directory / "config_sentence_transformers.json").write_text(json.dumps(st))
    return directory
