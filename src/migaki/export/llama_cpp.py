"""llama.cpp through llama-cpp-python (the optional extra `migaki[export]`): its own
Hugging Face → GGUF converter, its quantizer, and its runtime, which checks what they wrote.

The converter (`convert_hf_to_gguf.py` with its `conversion/` package and `gguf-py/`) ships
only in llama-cpp-python's source package, not in the installed module: migaki unpacks those
three from the source package of the installed version into its cache once (fetched with
pip from the package index the machine uses), or uses a llama.cpp tree named by
$MIGAKI_LLAMA_CPP. Writing a converter of our own is what made other tools' GGUF files
gibberish; llama.cpp's own converter is the one its runtime is tested against."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path

from migaki.errors import UserError
from migaki.models.bundled import cache_root

log = logging.getLogger(__name__)

EXTRA = "pip install 'migaki[export]' (compiles llama.cpp: about 10 minutes on 2 cores)"
# --quant: llama.cpp's file type (llama_ftype) for each quantization `--format gguf` writes
QUANTS = {"f16": 1, "q8_0": 7, "q4_k_m": 15}
_CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion", "gguf-py")
# tarfile's "data" filter refuses links and paths that leave the folder (Python 3.11.4+)
_SAFE = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


def require() -> object:
    """The llama_cpp module, or a UserError naming the extra to install."""
    try:
        import llama_cpp
    except ImportError:
        raise UserError(f"--format gguf/ollama needs llama-cpp-python: {EXTRA}") from None
    return llama_cpp


def check_quant(quant: str) -> None:
    if quant not in QUANTS:
        raise UserError(f"--quant {quant}: GGUF exports are {', '.join(QUANTS)}")


def write_gguf(hf_dir: Path, out: Path, quant: str) -> None:
    """Convert the Hugging Face folder `hf_dir` to one GGUF file `out` of type `quant`: the
    converter writes exact fp32, llama.cpp's quantizer takes it to `quant` (f16 included, so
    every type goes one path). Both run in child processes: llama.cpp logs every tensor on
    the C side's stderr, and a crash there must not take the export's clean-up with it."""
    require()
    with tempfile.TemporaryDirectory(prefix="migaki-gguf-", dir=out.parent) as tmp:
        full = Path(tmp) / "model-f32.gguf"
        script = converter_tree() / "convert_hf_to_gguf.py"
        _child(
            [str(script), str(hf_dir), "--outfile", str(full), "--outtype", "f32"],
            full,
            f"llama.cpp's converter refused {hf_dir}",
        )
        _child(
            ["-c", _QUANTIZE, str(full), str(out), str(QUANTS[quant])],
            out,
            f"llama.cpp could not quantize the model to {quant}",
        )


# llama_model_quantize through llama-cpp-python's bindings, run as `python -c`
_QUANTIZE = """
import ctypes, os, sys, llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = int(sys.argv[3])
params.nthread = os.cpu_count() or 1
status = llama_cpp.llama_model_quantize(
    sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(params)
)
sys.exit(f"llama_model_quantize returned {status}" if status else 0)
"""


def _child(args: list[str], made: Path, failure: str) -> None:
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0 or not made.is_file():
        lines = [line for line in done.stderr.splitlines() if line.strip()] or ["no output"]
        raise UserError(f"{failure}: {lines[-1].strip()}")


def converter_tree() -> Path:
    """A llama.cpp source tree holding the converter: $MIGAKI_LLAMA_CPP, else the one
    unpacked into migaki's cache from the installed llama-cpp-python's source package."""
    named = os.environ.get("MIGAKI_LLAMA_CPP")
    if named:
        tree = Path(named).expanduser()
        if not (tree / "convert_hf_to_gguf.py").is_file():
            raise UserError(f"MIGAKI_LLAMA_CPP={named}: no convert_hf_to_gguf.py there")
        return tree
    require()
    version = metadata.version("llama-cpp-python")
    tree = cache_root() / "llama.cpp" / version
    if all((tree / part).exists() for part in _CONVERTER_PARTS):
        return tree
    log.info("fetching llama.cpp's converter (llama-cpp-python %s source package)", version)
    _unpack_converter(version, tree)
    return tree


def _unpack_converter(version: str, tree: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="migaki-llama-cpp-") as tmp:
        command = [
            *(sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"),
            *("--no-binary", ":all:", "-d", tmp, f"llama-cpp-python=={version}"),
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        archives = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if done.returncode != 0 or not archives:
            raise UserError(
                f"could not fetch llama-cpp-python {version}'s source package for its GGUF "
                "converter (no package index here?); set MIGAKI_LLAMA_CPP to a llama.cpp "
                f"checkout of the same version instead"
            )
        staging = Path(tmp) / "tree"
        prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
        with tarfile.open(archives[0]) as archive:
            members = [
                m
                for m in archive.getmembers()
                if m.name.startswith(prefix) and _wanted(m.name, prefix)
            ]
            archive.extractall(staging, members=members, **_SAFE)
        tree.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tree, ignore_errors=True)
        shutil.move(staging / prefix, tree)


def _wanted(name: str, prefix: str) -> bool:
    return name[len(prefix) :].split("/", 1)[0] in _CONVERTER_PARTS


def load_runtime(path: Path, context: int = 2048, all_logits: bool = True):
    """The GGUF file in llama.cpp's runtime. `all_logits` keeps the logits of every position
    (the verification reads log-probabilities of whole answers); generation alone needs only
    the last one, and a 262k vocabulary makes the difference large."""
    llama_cpp = require()
    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=context,
        logits_all=all_logits,
        n_threads=os.cpu_count() or 1,
        seed=0,
        verbose=False,
    )
