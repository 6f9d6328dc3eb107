from pathlib import Path

import pytest

FAMILIES = ["tiny-llama", "tiny-llama-tied", "tiny-mistral", "tiny-qwen2", "tiny-qwen3"]
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def wiki_text() -> str:
    path = SHARED_DATA / "text" / "enwiki_sample.txt"
    if not path.is_file():
        pytest.skip("shared Wikipedia sample not available")
    return path.read_text(encoding="utf-8")
