"""Text sources for calibration and evaluation.

``default_text()`` is the embedded default: English Wikipedia article text from the sample dump
that ships inside the PyPI ``gensim`` wheel (its test data), parsed at first use and cached.
``load_texts(source)`` reads a local .txt / .jsonl file, the default text, or an HF dataset.
"""

from __future__ import annotations

import bz2
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from llmsculpt._resources import package_file
from llmsculpt.errors import SculptError, require
from llmsculpt.io.files import iter_jsonl, looks_local, read_text

_GENSIM_DUMP = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_CACHE_NAME = "enwiki-gensim-4.4.0.txt"
HELD_OUT_FRACTION = 0.2  # the last 20 % of articles are the default held-out text


# ---- wiki markup -> prose ---------------------------------------------------------------------
def _strip_nested(text: str, open_: str, close: str) -> str:
    out, depth, i = [], 0, 0
    while i < len(text):
        if text.startswith(open_, i):
            depth += 1
            i += len(open_)
        elif depth and text.startswith(close, i):
            depth -= 1
            i += len(close)
        else:
            if not depth:
                out.append(text[i])
            i += 1
    return "".join(out)


_LINK_DROP = re.compile(r"\[\[(?:File|Image|Category|[a-z\-]{2,12}):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]", re.I)
_LINK = re.compile(r"\[\[(?:[^\]|]*\|)?([^\]]*)\]\]")
_EXTLINK = re.compile(r"\[https?://\S+\s?([^\]]*)\]")
_REF = re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", re.S | re.I)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_TAG = re.compile(r"<[^>]+>")
_HEADING = re.compile(r"^=+\s*(.*?)\s*=+\s*$", re.M)


def clean_wikitext(text: str) -> str:
    """Wiki markup to plain prose: templates, tables, refs, files, categories and markup removed."""
    text = _COMMENT.sub("", text)
    text = _REF.sub("", text)
    text = _strip_nested(text, "{{", "}}")
    text = _strip_nested(text, "{|", "|}")
    text = _LINK_DROP.sub("", text)
    text = _LINK.sub(r"\1", text)
    text = _EXTLINK.sub(r"\1", text)
    text = _TAG.sub("", text)
    text = text.replace("'''", "").replace("''", "")
    text = _HEADING.sub(r"\1", text)
    lines = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("*", "#", ":", ";", "|", "!", "__")):
            continue  # lists, tables and magic words are not prose
        if "thumb|" in line or "px|" in line:
            continue  # image captions whose nested links survived
        if len(line.split()) < 4:
            continue  # headings and fragments
        lines.append(re.sub(r"\s+", " ", line))
    return "\n".join(lines)


def _gensim_dump() -> Path:
    return package_file(
        "gensim", _GENSIM_DUMP, what="the embedded default text (Wikipedia sample in the gensim wheel)",
        install="pip install --no-deps gensim==4.4.0 (or pass --calib FILE)",
    )


def parse_wiki_dump(path: Path) -> list[tuple[str, str]]:
    """(title, prose) of every article (namespace 0, not a redirect) of a bz2 MediaWiki dump."""
    articles = []
    with bz2.open(path, "rb") as f:
        title, ns, redirect = None, None, False
        for _event, elem in ET.iterparse(f, events=("end",)):
            tag = elem.tag.rsplit("}", 1)[-1]
            if tag == "title":
                title = elem.text
            elif tag == "ns":
                ns = elem.text
            elif tag == "redirect":
                redirect = True
            elif tag == "text":
                if ns == "0" and not redirect and elem.text:
                    prose = clean_wikitext(elem.text)
                    if len(prose) > 500:
                        articles.append((title or "", prose))
            elif tag == "page":
                title, ns, redirect = None, None, False
                elem.clear()
    return articles


def default_text() -> str:
    """The embedded default text (~MB of Wikipedia prose), articles separated by ' = Title = ' lines."""
    from llmsculpt.models.loading import cache_dir

    cached = cache_dir() / "text" / _CACHE_NAME
    if cached.is_file():
        return cached.read_text(encoding="utf-8")
    articles = parse_wiki_dump(_gensim_dump())
    text = "".join(f" = {title} = \n{body}\n\n" for title, body in articles)
    from llmsculpt.io.save import atomic_file

    with atomic_file(cached) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return text


def split_articles(text: str) -> list[str]:
    parts = re.split(r"^ = .+ = $", text, flags=re.M)
    return [p.strip() for p in parts if p.strip()]


def default_documents(split: str = "calibration") -> list[str]:
    """Articles of the default text: ``calibration`` = first 80 %, ``heldout`` = last 20 %, ``all``."""
    docs = split_articles(default_text())
    cut = int(len(docs) * (1 - HELD_OUT_FRACTION))
    if split == "calibration":
        return docs[:cut]
    if split == "heldout":
        return docs[cut:]
    if split == "all":
        return docs
    raise SculptError(f"split must be calibration, heldout or all, got {split!r}")


# ---- sources --------------------------------------------------------------------------------
def _read_jsonl(path: Path, field: str | None) -> list[str]:
    docs = []
    for n, rec in iter_jsonl(path, what="calibration file"):
        if field:
            if field not in rec:
                raise SculptError(f"{path}:{n}: no field {field!r}")
            docs.append(str(rec[field]))
        elif "text" in rec:
            docs.append(str(rec["text"]))
        elif "instruction" in rec:
            docs.append("\n".join(str(rec.get(k, "")) for k in ("instruction", "input", "output") if rec.get(k)))
        else:
            raise SculptError(f"{path}:{n}: no 'text' field (or alpaca instruction/input/output); use a field name")
    return docs


def _hf_dataset(name: str, field: str | None) -> list[str]:
    """'path[:config[:split]]', e.g. 'wikitext:wikitext-2-raw-v1:train' (needs network)."""
    from llmsculpt.models.loading import hub_unreachable

    why = hub_unreachable()
    if why:
        raise SculptError(f"calibration source {name!r} is not a local file, and as a Hugging Face dataset it "
                          f"cannot be fetched: {why}")
    datasets = require("datasets", extra="data", feature="Hugging Face datasets as calibration data")
    path, config, split = (name.split(":") + [None, None])[:3]
    try:
        ds = datasets.load_dataset(path, config, split=split or "train")
    except Exception as exc:  # the hub's errors are many and multi-line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SculptError(f"calibration source {name!r} is not a local file, and as a Hugging Face dataset it "
                          f"could not be loaded: {first}") from None
    key = field or ("text" if "text" in ds.column_names else ds.column_names[0])
    return [str(t) for t in ds[key] if str(t).strip()]


def load_texts(source: str | os.PathLike | None = None, *, field: str | None = None, split: str = "calibration") -> list[str]:
    """Documents from ``source``: None/"default" (embedded text; ``split`` picks the part), a .txt
    file (documents separated by blank lines), a .jsonl file, or an HF dataset name ('org/name:config:split')."""
    if source is None or str(source) == "default":
        return default_documents(split)
    path = Path(source).expanduser()
    if path.suffix in (".txt", ".jsonl", ".json", ".md") or path.exists() or looks_local(str(source)):
        if path.suffix in (".jsonl", ".json"):
            docs = _read_jsonl(path, field)
        else:
            raw = read_text(path, what="calibration file")
            docs = [d.strip() for d in re.split(r"\n\s*\n", raw) if d.strip()]
        if not docs:
            raise SculptError(f"calibration file {path} is empty")
        return docs
    if "/" in str(source) or ":" in str(source):
        return _hf_dataset(str(source), field)
    raise SculptError(f"calibration source {source!r} not found: not a file, 'default', or a dataset name")
