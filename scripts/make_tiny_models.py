#!/usr/bin/env python
"""Build randomly initialised models of the real NeMo classes and save them as .nemo.

    python scripts/make_tiny_models.py [--out models/tiny] [--size tiny|real] [--force]

No model hub is reachable where voxgraph is built and tested, so tests load these
files through the same `restore_from` path production uses for real checkpoints.
Outputs are meaningless; classes, configs, shapes and code paths are real.

- diarizer.nemo  SortformerEncLabelModel, 4 speakers
- embedder.nemo  EncDecSpeakerLabelModel (TitaNet-style), 192-dim embeddings
- asr.nemo       EncDecRNNTBPEModel with TDT decoding and a locally trained BPE tokenizer
- diarizer_streaming.nemo  SortformerEncLabelModel in streaming mode (speaker cache + FIFO,
                 as diar_streaming_sortformer_4spk-v2), with small streaming sizes
- canary.nemo    EncDecMultiTaskModel (Canary-style AED, canary2 prompt format) with an
                 aggregate CanaryTokenizer: special tokens + a SentencePiece per language
                 (en, de, fr, es), all trained locally; transcribes and translates

`--size real` builds the real-size architectures (Sortformer 4spk-v1, TitaNet-large,
Parakeet-TDT-0.6B-like) for GPU benchmarks; the ASR one is about 2.4 GB.
Builds are seeded: the same seed gives the same weights and tokenizer.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

CONFIGS_YAML = Path(__file__).with_name("tiny_nemo_configs.yaml")
ROLES = ("diarizer", "embedder", "asr", "diarizer_streaming", "canary")
FILENAMES = {
    "diarizer": "diarizer.nemo",
    "embedder": "embedder.nemo",
    "asr": "asr.nemo",
    "diarizer_streaming": "diarizer_streaming.nemo",
    "canary": "canary.nemo",
}
DEFAULT_SEED = 1234

# How far the joint's non-blank logits are lifted above blank in the tiny ASR model:
# random joints decode to all blanks, which would leave words/segments untested.
ASR_TOKEN_BIAS = 4.0


# ----------------------------------------------------------------------------- configs


def tiny_configs() -> dict[str, dict[str, Any]]:
    """The verified tiny configs (a fresh copy each call)."""
    with CONFIGS_YAML.open() as f:
        return yaml.safe_load(f)


def _merged(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overlay` merged in, nested dicts key by key (neither is changed)."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def streaming_sortformer(cfgs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The streaming Sortformer config: `sortformer` with the `sortformer_streaming` overlay."""
    return _merged(cfgs["sortformer"], cfgs["sortformer_streaming"])


def _jasper_block(filters: int, repeat: int, kernel: int, residual: bool) -> dict[str, Any]:
    return {
        "filters": filters,
        "repeat": repeat,
        "kernel": [kernel],
        "stride": [1],
        "dilation": [1],
        "dropout": 0.0,
        "residual": residual,
        "separable": True,
        "se": True,
        "se_context_size": -1,
    }


def real_configs() -> dict[str, dict[str, Any]]:
    """Real-size architectures (random weights) for benchmarks, from the tiny ones."""
    cfgs = tiny_configs()

    # Sortformer diar_sortformer_4spk-v1: 18 Conformer (512) + 18 Transformer (192) layers.
    s = cfgs["sortformer"]
    s["model_defaults"] = {"fc_d_model": 512, "tf_d_model": 192}
    s["sortformer_modules"].update(fc_d_model=512, tf_d_model=192)
    s["encoder"].update(
        n_layers=18, d_model=512, n_heads=8, subsampling_conv_channels=256, ff_expansion_factor=4
    )
    s["transformer_encoder"].update(
        num_layers=18, hidden_size=192, inner_size=768, num_attention_heads=8
    )

    # Streaming Sortformer v2: the same dims, streaming sizes of its 1.04 s latency setting.
    cfgs["sortformer_streaming"]["sortformer_modules"].update(
        spkcache_len=188,
        fifo_len=188,
        chunk_len=6,
        chunk_right_context=7,
        spkcache_update_period=144,
    )

    # TitaNet-large: prolog, 3 mega blocks of 3 sub-blocks (kernels 7/11/15), epilog 3072.
    t = cfgs["titanet"]
    t["encoder"]["jasper"] = [
        _jasper_block(1024, 1, 3, False),
        _jasper_block(1024, 3, 7, True),
        _jasper_block(1024, 3, 11, True),
        _jasper_block(1024, 3, 15, True),
        _jasper_block(3072, 1, 1, False),
    ]
    t["decoder"].update(feat_in=3072, num_classes=16681)

    # Parakeet-TDT-0.6B: 24-layer FastConformer (1024), 2-layer LSTM predictor (640), 128 mels.
    a = cfgs["parakeet_tdt"]
    a["model_defaults"] = {"enc_hidden": 1024, "pred_hidden": 640, "joint_hidden": 640}
    a["preprocessor"]["features"] = 128
    a["encoder"].update(
        feat_in=128,
        n_layers=24,
        d_model=1024,
        n_heads=8,
        subsampling_conv_channels=256,
        ff_expansion_factor=4,
    )
    a["decoder"]["prednet"].update(pred_hidden=640, pred_rnn_layers=2)
    a["joint"]["jointnet"]["joint_hidden"] = 640
    return cfgs


# ----------------------------------------------------------------------------- helpers


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def quiet_nemo() -> None:
    """Keep NeMo's INFO/WARNING chatter about missing datasets out of the output."""
    import logging as std_logging

    # nv_one_logger warns while NeMo imports it: set its level before any NeMo import.
    std_logging.getLogger("nv_one_logger").setLevel(std_logging.ERROR)
    from nemo.utils import logging as nemo_logging

    nemo_logging.setLevel(std_logging.ERROR)


_WORDS = (
    "the a and to of in is it that for on with as was at by be this have from or one had "
    "not but what all were when we there can an your which their said if do will each about "
    "how up out them then she many some so these would other into has more her two like him "
    "see time could no make than first been its who now people my made over did down only way "
    "find use may water long little very after words called just where most know get through "
    "back much before go good new write our used me man too any day same right look think also "
    "around another came come work three word must because does part even place well such here "
    "take why things help put years different away again off went old number great tell men say "
    "small every found still between name should home big give air line set own under read last "
    "never us left end along while might next sound below saw something thought both few those "
    "always looked show large often together asked house world going want school important until "
    "form food keep children feet land side without boy once animals life enough took sometimes "
    "four head above kind began almost live page got earth need far hand high year mother light "
    "parts country father let night following picture being study second eyes soon times story "
    "boys since white days paper hard near sentence better best across during today others sure "
    "means knew its try told young miles sun ways thing whole hear example heard several change "
    "answer room sea against top turned learn point city play toward five using himself usually "
    "meeting speaker voice record transcript call agenda budget project customer support team"
).split()


def write_corpus(path: Path, seed: int, n_sentences: int) -> None:
    """Seeded pseudo-English sentences: enough for a BPE vocabulary, no download needed."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf8") as f:
        for _ in range(n_sentences):
            n = rng.randint(4, 14)
            f.write(" ".join(rng.choice(_WORDS) for _ in range(n)) + "\n")


@contextlib.contextmanager
def _captured_stderr_fd():
    """SentencePiece logs through C++ glog straight to fd 2; keep it unless training fails."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as buf:
        os.dup2(buf.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            buf.seek(0)
            sys.stderr.write(buf.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def train_tokenizer(out_dir: Path, vocab_size: int, seed: int) -> Path:
    """Train a SentencePiece BPE tokenizer into out_dir (tokenizer.model + vocab.txt)."""
    from nemo.collections.common.tokenizers.sentencepiece_tokenizer import create_spt_model

    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = out_dir / "corpus.txt"
    write_corpus(corpus, seed, n_sentences=2000 if vocab_size <= 256 else 20000)
    tok_dir = out_dir / "tokenizer"
    with _captured_stderr_fd():
        # sample_size=-1 loads every sentence, so SentencePiece's input shuffle has
        # nothing to sample and training is deterministic.
        create_spt_model(
            str(corpus),
            vocab_size=vocab_size,
            sample_size=-1,
            do_lower_case=True,
            tokenizer_type="bpe",
            output_dir=str(tok_dir),
        )
    return tok_dir


def _cfg(d: dict[str, Any]):
    from omegaconf import OmegaConf

    return OmegaConf.create(d)


# ----------------------------------------------------------------------------- builders


def build_diarizer(cfg: dict[str, Any], seed: int):
    from nemo.collections.asr.models import SortformerEncLabelModel

    seed_everything(seed)
    return SortformerEncLabelModel(cfg=_cfg(cfg))


def build_embedder(cfg: dict[str, Any], seed: int):
    from nemo.collections.asr.models import EncDecSpeakerLabelModel

    seed_everything(seed)
    return EncDecSpeakerLabelModel(cfg=_cfg(cfg))


def build_asr(cfg: dict[str, Any], seed: int, vocab_size: int, workdir: Path):
    """TDT model with its own tokenizer; the tokenizer files are packed into the .nemo."""
    import torch
    from nemo.collections.asr.models import EncDecRNNTBPEModel

    cfg = copy.deepcopy(cfg)
    cfg["tokenizer"]["dir"] = str(train_tokenizer(workdir, vocab_size, seed))
    seed_everything(seed)
    model = EncDecRNNTBPEModel(cfg=_cfg(cfg))
    n_tokens = model.tokenizer.vocab_size
    with torch.no_grad():
        # Output layout: [tokens..., blank, durations...]. Lift tokens over blank.
        model.joint.joint_net[-1].bias[:n_tokens] += ASR_TOKEN_BIAS
    return model


# The tiny Canary's languages; each gets its own small SentencePiece, as Canary's
# aggregate tokenizer has (canary-1b-flash: en, de, es, fr).
CANARY_LANGS = ("en", "de", "fr", "es")
# Timestamp tokens <|0|> ... <|N-1|> (encoder frames, 80 ms each): 8 s here; the real
# models have enough for their 40 s inputs.
CANARY_TIMESTAMP_TOKENS = 100
# A random tied-weight decoder only echoes its last prompt token, which leaves text,
# words and segments untested. So the tiny Canary is fitted for a few steps to answer
# in the canary2 timestamp format, in the requested target language: these answers,
# whatever the audio. Times are <|frame|> tokens (80 ms); "." ends a segment.
CANARY_ANSWERS = {
    "en": "<|1|> hello <|3|> <|4|> team. <|6|> <|8|> the <|9|> <|10|> budget <|12|> "
    "<|13|> is <|14|> <|15|> ready. <|17|>",
    "de": "<|1|> hallo <|3|> <|4|> team. <|6|> <|8|> das <|9|> <|10|> projekt <|12|> "
    "<|13|> ist <|14|> <|15|> gut. <|17|>",
    "fr": "<|1|> bonjour <|3|> <|4|> equipe. <|6|> <|8|> le <|9|> <|10|> projet <|12|> "
    "<|13|> est <|14|> <|15|> bon. <|17|>",
    "es": "<|1|> hola <|3|> <|4|> equipo. <|6|> <|8|> el <|9|> <|10|> proyecto <|12|> "
    "<|13|> es <|14|> <|15|> bueno. <|17|>",
}
CANARY_FIT_STEPS = 60

_FOREIGN_WORDS = {
    "de": "der die das und ist nicht ein eine ich du wir sie es mit von zu auf fuer "
    "haben sein werden kann heute morgen sprechen besprechung team kunde projekt "
    "gut neu gross klein zeit jahr tag haus welt arbeit frage antwort",
    "fr": "le la les et est pas un une je tu nous vous ils avec de du sur pour avoir "
    "etre faire peut aujourd hui demain parler reunion equipe client projet bon "
    "nouveau grand petit temps annee jour maison monde travail question reponse",
    "es": "el la los las y es no un una yo tu nosotros ellos con de del en para tener "
    "ser hacer puede hoy manana hablar reunion equipo cliente proyecto bueno nuevo "
    "grande pequeno tiempo ano dia casa mundo trabajo pregunta respuesta",
}


def canary_special_tokens(n_timestamps: int = CANARY_TIMESTAMP_TOKENS) -> list[str]:
    """Every prompt token the canary2 format writes, languages, and timestamp tokens."""
    from nemo.collections.common.tokenizers.canary_tokenizer import CANARY2_BOCTX

    flags = [f"<|{k}|>" for f in ("pnc", "itn", "timestamp", "diarize") for k in (f, f"no{f}")]
    emotions = [f"<|emo:{e}|>" for e in ("undefined", "neutral", "angry", "happy", "sad")]
    langs = [f"<|{lang}|>" for lang in CANARY_LANGS]
    tasks = ["<|transcribe|>", "<|translate|>"]
    stamps = [f"<|{i}|>" for i in range(n_timestamps)]
    return [CANARY2_BOCTX, *flags, *emotions, *langs, *tasks, *stamps]


def train_canary_tokenizers(out_dir: Path, vocab_size: int, seed: int) -> dict[str, Path]:
    """The special-token tokenizer and one BPE tokenizer per language, as directories."""
    from nemo.collections.common.tokenizers.canary_tokenizer import CanaryTokenizer
    from nemo.collections.common.tokenizers.sentencepiece_tokenizer import create_spt_model

    dirs: dict[str, Path] = {}
    with _captured_stderr_fd():
        spl = out_dir / "spl_tokens"
        CanaryTokenizer.build_special_tokenizer(canary_special_tokens(), spl)
        dirs["spl_tokens"] = spl
        for k, lang in enumerate(CANARY_LANGS):
            lang_dir = out_dir / lang
            lang_dir.mkdir(parents=True, exist_ok=True)
            corpus = lang_dir / "corpus.txt"
            words = _WORDS if lang == "en" else tuple(_FOREIGN_WORDS[lang].split())
            rng = random.Random(seed + k)
            lines = [
                " ".join(rng.choice(words) for _ in range(rng.randint(4, 12))) + "."
                for _ in range(400)
            ]
            # The fitted answers' words must be whole pieces, not <unk>.
            lines.append(re.sub(r"<\|\d+\|>", " ", CANARY_ANSWERS[lang]))
            corpus.write_text("\n".join(lines) + "\n", encoding="utf8")
            create_spt_model(
                str(corpus),
                vocab_size=vocab_size,
                sample_size=-1,
                do_lower_case=True,
                tokenizer_type="bpe",
                output_dir=str(lang_dir / "tokenizer"),
            )
            dirs[lang] = lang_dir / "tokenizer"
    return dirs


def build_canary(cfg: dict[str, Any], seed: int, vocab_size: int, workdir: Path):
    """A Canary-style multitask AED model; its tokenizers are packed into the .nemo."""
    from nemo.collections.asr.models import EncDecMultiTaskModel

    cfg = copy.deepcopy(cfg)
    dirs = train_canary_tokenizers(Path(workdir) / "canary_tokenizers", vocab_size, seed)
    cfg["tokenizer"]["langs"] = {lang: {"dir": str(d), "type": "bpe"} for lang, d in dirs.items()}
    # No external forced-aligner model: the tiny Canary stamps with timestamp tokens, and
    # NeMo would otherwise look for one in the .nemo of whatever was restored last.
    cfg["restore_timestamps_model"] = False
    seed_everything(seed)
    model = EncDecMultiTaskModel(cfg=_cfg(cfg))
    fit_canary(model, seed)
    return model


def fit_canary(model: Any, seed: int, steps: int = CANARY_FIT_STEPS) -> None:
    """Teacher-force `CANARY_ANSWERS` for a few Adam steps (eval mode: no dropout)."""
    import torch

    model.eval()
    gen = torch.Generator().manual_seed(seed)
    examples = []
    # Every (source, target) pair: the answer must follow the target alone.
    for tgt in CANARY_LANGS:
        for src in CANARY_LANGS:
            slots = {
                "source_lang": src,
                "target_lang": tgt,
                "pnc": "yes",
                "timestamp": "yes",
                "decodercontext": "",
                "emotion": "<|emo:undefined|>",
                "itn": "no",
                "diarize": "no",
            }
            turns = [
                {"role": "user", "slots": slots},
                {
                    "role": "assistant",
                    "slots": {"text": CANARY_ANSWERS[tgt], "prompt_language": tgt},
                },
            ]
            enc = model.prompt.encode_dialog(turns)
            examples.append((enc["input_ids"], len(enc["context_ids"])))
    # Only the decoder side learns the answers: no backward through the encoder.
    params = [*model.transf_decoder.parameters(), *model.log_softmax.parameters()]
    model.encoder.requires_grad_(False)
    opt = torch.optim.Adam(params, lr=3e-3)
    n = len(examples)
    width = max(len(ids) for ids, _ in examples)
    pad = model.tokenizer.pad_id
    for _ in range(steps):
        # Varied short audio (noise to near silence) so the answer ignores it.
        lengths = torch.randint(4000, 16000, (n,), generator=gen)
        audio = torch.randn((n, int(lengths.max())), generator=gen)
        audio *= torch.rand((n, 1), generator=gen) ** 3
        tokens = torch.full((n, width), pad, dtype=torch.long)
        target = torch.full((n, width), -100, dtype=torch.long)
        for row, (ids, n_ctx) in enumerate(examples):
            tokens[row, : len(ids)] = ids
            target[row, n_ctx - 1 : len(ids) - 1] = ids[n_ctx:]
        with torch.enable_grad():
            log_probs, *_ = model.forward(
                input_signal=audio,
                input_signal_length=lengths,
                transcript=tokens,
                transcript_length=torch.tensor([len(ids) for ids, _ in examples]),
            )
            loss = torch.nn.functional.nll_loss(
                log_probs.reshape(-1, log_probs.shape[-1]), target.reshape(-1), ignore_index=-100
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.encoder.requires_grad_(True)
    model.zero_grad(set_to_none=True)


def build_model(role: str, workdir: Path, size: str = "tiny", seed: int = DEFAULT_SEED):
    """One model of `role` (one of ROLES), in eval mode.

    The ASR model's tokenizer lives in `workdir` and `save_to` packs it from
    there, so keep `workdir` until the model is saved.
    """
    cfgs = tiny_configs() if size == "tiny" else real_configs()
    if role == "diarizer":
        model = build_diarizer(cfgs["sortformer"], seed)
    elif role == "diarizer_streaming":
        model = build_diarizer(streaming_sortformer(cfgs), seed)
    elif role == "embedder":
        model = build_embedder(cfgs["titanet"], seed)
    elif role == "asr":
        vocab = 64 if size == "tiny" else 1024
        model = build_asr(cfgs["parakeet_tdt"], seed, vocab, Path(workdir))
    elif role == "canary":
        model = build_canary(cfgs["canary"], seed, 48, Path(workdir))
    else:
        raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
    return model.eval()


def make_models(
    out: Path | str,
    size: str = "tiny",
    force: bool = False,
    seed: int = DEFAULT_SEED,
    roles: tuple[str, ...] = ROLES,
    log=print,
) -> dict[str, Path]:
    """Build and save the models of `roles` into `out`; existing files are kept unless force."""
    quiet_nemo()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for role in roles:
        path = out / FILENAMES[role]
        paths[role] = path
        if path.exists() and not force:
            log(f"{role:18s} {path} exists, skipped (use --force to rebuild)")
            continue
        t0 = time.perf_counter()
        # Stage in `out` so the final rename is atomic: a half-written file must
        # never look like a model to a concurrent loader.
        with tempfile.TemporaryDirectory(dir=out, prefix=".build-") as d:
            model = build_model(role, workdir=Path(d), size=size, seed=seed)
            n_params = sum(p.numel() for p in model.parameters())
            staged = Path(d) / path.name
            model.save_to(str(staged))
            os.replace(staged, path)
        dt = time.perf_counter() - t0
        log(
            f"{role:18s} {path}  {type(model).__name__}  {n_params / 1e6:.2f}M params  "
            f"{path.stat().st_size / 1e6:.2f} MB  {dt:.1f} s"
        )
        del model
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="models/tiny", help="output directory (default: models/tiny)")
    p.add_argument("--size", choices=("tiny", "real"), default="tiny")
    p.add_argument("--force", action="store_true", help="rebuild files that already exist")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument(
        "--only",
        default=",".join(ROLES),
        help=f"comma-separated roles to build (default: {','.join(ROLES)})",
    )
    args = p.parse_args(argv)
    roles = tuple(r.strip() for r in args.only.split(",") if r.strip())
    bad = [r for r in roles if r not in ROLES]
    if bad:
        p.error(f"unknown role(s) {bad}; choose from {ROLES}")
    t0 = time.perf_counter()
    make_models(args.out, size=args.size, force=args.force, seed=args.seed, roles=roles)
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
