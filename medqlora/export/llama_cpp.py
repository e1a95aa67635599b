"""llama.cpp's converters, which GGUF exports run: found (LLAMA_CPP_DIR, a checkout, Unsloth's copy, the kit's
cache), fetched from the llama-cpp-python source package (python -m medqlora.export --fetch-llama-cpp), run, and
the fields of a GGUF file read back."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from .. import backends, signals
from ..errors import ConfigError, ModelError
from ..messages import log
from ..secrets import printable
from ..shown_paths import quoted_path

LLAMA_CPP_HINT = (
    "GGUF export uses llama.cpp's converter. Get it with: git clone https://github.com/ggml-org/llama.cpp "
    "and set LLAMA_CPP_DIR to that folder (or run: python -m medqlora.export --fetch-llama-cpp, which takes "
    "the converter from the llama-cpp-python source package on PyPI). The merged model is exported meanwhile."
)


GGUF_CONVERTER = "convert_hf_to_gguf.py"
LORA_CONVERTER = "convert_lora_to_gguf.py"


def converters_for(formats: set[str]) -> tuple[str, ...]:
    """llama.cpp's scripts the GGUF formats among ``formats`` run (gguf: the model's, gguf_lora: the adapter's)."""
    return tuple(script for fmt, script in (("gguf", GGUF_CONVERTER), ("gguf_lora", LORA_CONVERTER)) if fmt in formats)


def llama_cpp_dir(*converters: str) -> Path | None:
    """A llama.cpp checkout (or its converters alone) holding ``converters`` (by default convert_hf_to_gguf.py):
    LLAMA_CPP_DIR, ./llama.cpp, ~/llama.cpp, Unsloth's copy, the kit's cache. A LLAMA_CPP_DIR that is set is the one
    used: one that is no folder with the converters is refused, not passed over; so is a MEDQLORA_CACHE that is no
    folder."""
    converters = converters or (GGUF_CONVERTER,)
    named = os.environ.get("LLAMA_CPP_DIR")
    if named:
        folder = Path(named).expanduser()
        missing = [script for script in converters if not (folder / script).is_file()]
        if missing:
            older = (folder / GGUF_CONVERTER).is_file()  # a checkout from before the LoRA converter
            what = ("is a file, not a folder" if folder.is_file() else "does not exist" if not folder.exists()
                    else f"holds no {' and no '.join(missing)}" + (" (an older llama.cpp checkout: update it with "
                                                                   "git pull)" if older else ""))
            raise ConfigError(f"LLAMA_CPP_DIR={quoted_path(named, 200)} {what}: it must name a llama.cpp checkout "
                              f"(the folder with {' and '.join(converters)}). Fix it, or unset LLAMA_CPP_DIR to use "
                              "the converter the kit finds itself.")
        return folder
    for candidate in ("llama.cpp", "~/llama.cpp", "~/.unsloth/llama.cpp"):
        if _holds(Path(candidate).expanduser(), converters):
            return Path(candidate).expanduser()
    folder = backends.check_cache_dir(backends.CACHE_DIR) / "llama.cpp"  # a MEDQLORA_CACHE file: named, not passed
    return folder if _holds(folder, converters) else None


def _holds(folder: Path, converters: tuple[str, ...]) -> bool:
    return all((folder / script).is_file() for script in converters)


# the types convert_hf_to_gguf.py writes itself; the others are quantized from an f16 GGUF by llama-quantize
CONVERTER_TYPES = ("q8_0", "f16", "bf16", "f32")


def llama_quantize(folder: Path | None) -> Path | None:
    """llama.cpp's llama-quantize: built in the llama.cpp folder ``folder``, beside its converter, or on PATH."""
    candidates = (folder / "build" / "bin" / "llama-quantize", folder / "llama-quantize") if folder else ()
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    found = shutil.which("llama-quantize")
    return Path(found) if found else None


def quantizer_for(gguf_type: str, folder: Path | None) -> Path | None:
    """The llama-quantize an export.gguf_type needs (None for a type the converter writes itself); refused when it
    is needed and not found, before any export work."""
    if gguf_type in CONVERTER_TYPES:
        return None
    found = llama_quantize(folder)
    if found is None:
        where = (f"{printable(folder)}/build/bin, {printable(folder)} or PATH" if folder else "PATH")
        raise ConfigError(
            f"export.gguf_type {gguf_type} needs llama.cpp's llama-quantize program, which is not found (looked in "
            f"{where}). Build it in a llama.cpp checkout (git clone https://github.com/ggml-org/llama.cpp; cmake -B "
            "build; cmake --build build --target llama-quantize) and set LLAMA_CPP_DIR to that checkout, or put "
            f"llama-quantize on PATH; or set export.gguf_type to one the converter writes itself: "
            f"{', '.join(CONVERTER_TYPES)}.")
    return found


def run_tool(command: list[str], name: str, writes: Path) -> None:
    """Run one of llama.cpp's tools (found, so installed), which must write the file ``writes``. A tool that fails,
    or ends without writing it, stops with what it said and what to change: a converter of another llama.cpp
    version than the gguf package it imports (or than the options the kit passes), or a llama-quantize program of
    another version (or another program of that name), fails like this."""
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    converter = command[0] == sys.executable
    unusable = _unusable_output(writes, CONVERTER_USAGE if converter else QUANTIZE_USAGE)
    if done.returncode == 0 and not unusable:
        return
    tool = Path(command[1] if converter else command[0])
    said = (done.stderr.strip() or done.stdout.strip())[-800:]
    what = (f"failed (exit {done.returncode}): {printable(done.stderr.strip()[-800:])}" if done.returncode != 0 else
            f"ended without error but {unusable}" + (f"; it printed: {printable(said)}" if said else ""))
    log.error("%s %s", name, what if done.returncode == 0 else f"failed: {done.stderr[-4000:]}")
    raise ToolFailed(
        f"{name} {'failed (exit ' + str(done.returncode) + ')' if done.returncode else 'wrote no usable file'}",
        f"{name} in {printable(tool.parent)} {what}\n" + (_converter_advice(name) if converter else
                                                            _quantizer_advice(tool, writes)))


CONVERTER_USAGE = "a version that takes other options than --outfile / --outtype?"
QUANTIZE_USAGE = ("the kit runs it as llama-quantize INPUT.gguf OUTPUT.gguf TYPE: a build of another version, or "
                  "another program of that name?")


def _converter_advice(name: str) -> str:
    elsewhere = (", or unset LLAMA_CPP_DIR to use the converter python -m medqlora.export --fetch-llama-cpp puts in "
                 "the kit's cache" if os.environ.get("LLAMA_CPP_DIR") else "")
    return (f"llama.cpp was found and its {name} ran, but did not work: a checkout whose converters do not match its "
            "gguf-py package (or the options this kit passes) fails like this. Update it (git pull in that checkout, "
            f"then pip install ./gguf-py there){elsewhere}; or leave that format out of export.formats.")


def _quantizer_advice(tool: Path, writes: Path) -> str:
    kind = writes.stem.removeprefix("model-")
    return (f"The llama-quantize program found ({printable(tool)}) ran, but did not work. Build llama-quantize from a "
            "current llama.cpp checkout (cmake -B build; cmake --build build --target llama-quantize) and set "
            "LLAMA_CPP_DIR to that checkout (its build/bin is looked in before PATH), or put a working "
            f"llama-quantize first on PATH; or set export.gguf_type to one the converter writes itself instead of "
            f"{printable(kind)}: {', '.join(CONVERTER_TYPES)}; or leave gguf out of export.formats.")


def _unusable_output(writes: Path, usage: str) -> str:
    """Why the file a tool was to write cannot be read back ('' when it can): missing (``usage``: the likely why),
    empty (a tool stopped while writing, a full disk), or not a regular file of its own (a link is never followed
    out of the export folder)."""
    try:
        status = writes.lstat()
    except FileNotFoundError:
        return f"wrote no {writes.name} ({usage})"
    if stat.S_ISLNK(status.st_mode):
        return f"left a symbolic link at {writes.name} instead of the file (the kit never reads through it)"
    if not stat.S_ISREG(status.st_mode):
        return f"left something that is not a regular file at {writes.name}"
    if status.st_size == 0:
        return f"wrote an empty {writes.name} (stopped while writing it, or the disk is full?)"
    return ""


def read_gguf(path: Path) -> Any:
    """gguf's reader on a file a converter wrote, whose damage (a cut-off file, another format) is a failed export,
    not a crash."""
    import gguf

    try:
        return gguf.GGUFReader(str(path))
    except (ValueError, OSError, KeyError, IndexError) as err:
        raise ModelError(f"{printable(path)} is not a readable GGUF file ({printable(err, 200)}): the converter that "
                         "wrote it stopped early or wrote another format. Run the export again; if it recurs, update "
                         "llama.cpp (git pull, then pip install ./gguf-py there) or leave that format out of "
                         "export.formats.") from None


class ToolFailed(ModelError):
    """A llama.cpp tool that was found and run, and failed: what it said and what to change; ``summary``: the failure
    in a few words, without this machine's paths (for the export report, which may be published)."""

    def __init__(self, summary: str, message: str) -> None:
        super().__init__(message)
        self.summary = summary


def gguf_field(reader: Any, key: str) -> Any:
    item = reader.fields.get(key)
    return None if item is None else item.contents()


def fetch_llama_cpp_converter(target: Path | None = None) -> Path:
    """llama.cpp's converter (and the gguf-py it was written for) from the llama-cpp-python source package, into
    ``target`` (the kit's cache by default). Where it goes is checked before anything is downloaded; an interrupted
    or failed fetch leaves nothing behind."""
    import tarfile
    import tempfile

    target = backends.CACHE_DIR / "llama.cpp" if target is None else target
    if (target / GGUF_CONVERTER).is_file() and (target / LORA_CONVERTER).is_file():
        return target
    _check_fetch_target(target)
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp) / "pip-tmp"  # pip's own temporary files too, so that an interrupted fetch leaves none
        scratch.mkdir()
        _run_pip([sys.executable, "-m", "pip", "download", "llama-cpp-python==0.3.36", "--no-deps",
                  "--no-binary", ":all:", "-d", tmp], env={**os.environ, "TMPDIR": str(scratch)})
        archive = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        partial = _partial_folder(target)
        _check_fetch_target(target)  # again: the download took a while
        shutil.rmtree(partial, ignore_errors=True)  # an earlier fetch's leftover folder (a link or a file is refused)
        try:
            with tarfile.open(archive) as tar:
                prefix = f"{archive.name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
                wanted = [m for m in tar.getmembers() if m.name.startswith(prefix) and m.isfile() and (
                    m.name.endswith((GGUF_CONVERTER, LORA_CONVERTER)) or "/conversion/" in m.name
                    or "/gguf-py/" in m.name or m.name.endswith("LICENSE"))]
                for member in wanted:
                    member.name = member.name.removeprefix(prefix)
                tar.extractall(partial, members=wanted, filter="data")
            if target.is_dir() and target.parent == backends.CACHE_DIR:  # an earlier fetch without the LoRA converter
                shutil.rmtree(target)
            partial.rename(target)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    return target


def _run_pip(command: list[str], **options: Any) -> None:
    """pip in a process group of its own: when the fetch is interrupted (Ctrl-C, SIGTERM, SIGHUP), pip and what it
    started (the pip that installs the build dependencies) are stopped with it, not left running."""
    pip = None
    try:
        with signals.deferred():  # a signal while pip starts stops it once its handle exists
            pip = subprocess.Popen(command, start_new_session=True, **options)
        code = pip.wait()
    finally:
        if pip is not None:
            _stop_group(pip)
    if code:
        raise subprocess.CalledProcessError(code, command)


def _stop_group(leader: subprocess.Popen) -> None:
    """End what is left of the process group ``leader`` started: SIGTERM, then SIGKILL after a few seconds."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(leader.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            leader.wait(timeout=5)
        except subprocess.TimeoutExpired:
            continue


def _partial_folder(target: Path) -> Path:
    """Where a fetch unpacks before it renames the folder into place."""
    return target.with_name(target.name + ".partial")


def _check_fetch_target(target: Path) -> None:
    """The folder the converters are fetched into: its parent a folder the kit can write (created if missing), and
    nothing at ``target`` but an earlier fetch (a file, or a link to a checkout of the user's, is never replaced);
    nothing at its unpacking folder but a folder an earlier fetch left (a file is not removed, a link never
    written through)."""
    cache = target.parent
    if cache == backends.CACHE_DIR:
        backends.check_cache_dir()
    variable = "MEDQLORA_CACHE" if cache == backends.CACHE_DIR else "the target folder"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        writable = os.access(cache, os.W_OK | os.X_OK)
    except OSError as err:
        raise ConfigError(f"{variable}: cannot create {printable(cache)} ({err.strerror}) to fetch llama.cpp's "
                          "converter into. Point MEDQLORA_CACHE at a folder you can write (or leave it unset for "
                          "~/.cache/medqlora).") from None
    if not writable:
        raise ConfigError(f"{variable}: {printable(cache)} is not writable, so llama.cpp's converter cannot be fetched "
                          "into it. Point MEDQLORA_CACHE at a folder you can write (or leave it unset for "
                          "~/.cache/medqlora).")
    if target.is_symlink():
        raise ConfigError(f"{printable(target)} is a symbolic link (to {printable(str(target.resolve()))}) without "
                          f"{LORA_CONVERTER} and {GGUF_CONVERTER}: the kit does not replace what a link leads to. "
                          "Update that llama.cpp checkout (git pull) and set LLAMA_CPP_DIR to it, or remove the link "
                          "to fetch the converter there.")
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{printable(target)} is a file, where the kit keeps llama.cpp's converter: move it away "
                          "and fetch again.")
    partial = _partial_folder(target)
    if partial.is_symlink():
        raise ConfigError(f"{printable(partial)} is a symbolic link (to {printable(str(partial.resolve()))}), where the "
                          "kit unpacks llama.cpp's converter before moving it into place: the kit never writes "
                          "through a link. Remove the link and fetch again.")
    if partial.exists() and not partial.is_dir():
        raise ConfigError(f"{printable(partial)} is a file, where the kit unpacks llama.cpp's converter before moving "
                          "it into place: move it away and fetch again.")
