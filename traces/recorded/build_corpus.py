"""Assemble the multi-domain text corpus the recorded-trace model is trained on.

Sources (all reachable offline on a Debian machine with the distribution mirror):

=============  =====================================================  ===================================
domain         source                                                 Debian package / location
=============  =====================================================  ===================================
code           the Python standard library source (``Lib/*.py``)      the running interpreter's stdlib
dictionary     The Collaborative International Dictionary of English  ``dict-gcide``
docs-en        Debian Reference (English)                             ``debian-reference-en``
docs-de        Debian Reference (German)                              ``debian-reference-de``
docs-fr        Debian Reference (French)                              ``debian-reference-fr``
quotes         BSD fortune cookie files                               ``fortunes``
=============  =====================================================  ===================================

Each source is split into documents (a file, a dictionary entry group, a few paragraphs, a quotation
group); a deterministic hash of the document sends about 1 in 20 to the held-out split, which the
recording prompts are drawn from. Output (git-ignored)::

    OUT/train/<domain>.txt      documents separated by a blank line + form feed
    OUT/heldout/<domain>.txt    held-out documents, same format
    OUT/manifest.json           bytes and document counts per domain

and ``traces/recorded/SOURCES.md`` (committed) with each source's licence, read from
``/usr/share/doc/PKG/copyright`` (and the interpreter's ``LICENSE.txt``).

    python traces/recorded/build_corpus.py --out runs/corpus [--max-mb 3] [--no-install]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

PACKAGES = ("dict-gcide", "debian-reference-en", "debian-reference-de", "debian-reference-fr", "fortunes")
DOC_SEP = "\n\f\n"  # between documents in a domain file
HERE = Path(__file__).resolve().parent
HELDOUT_ONE_IN = 20


def ensure_packages(install: bool) -> None:
    missing = [p for p in PACKAGES if not Path(f"/usr/share/doc/{p}/copyright").is_file()]
    if not missing:
        return
    if not install:
        sys.exit(f"missing Debian packages {missing}; run: apt-get install -y {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True, env=env)


def _paragraph_groups(text: str, target_chars: int) -> list[str]:
    """Split text on blank lines and regroup paragraphs into documents of about target_chars."""
    docs, current, size = [], [], 0
    for para in re.split(r"\n\s*\n", text):
        para = para.strip("\n")
        if not para.strip():
            continue
        current.append(para)
        size += len(para)
        if size >= target_chars:
            docs.append("\n\n".join(current))
            current, size = [], 0
    if current:
        docs.append("\n\n".join(current))
    return docs


def code_docs() -> list[str]:
    lib = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for path in sorted(lib.rglob("*.py")):
        rel = path.relative_to(lib).parts
        if rel[0] in ("site-packages", "test", "idlelib", "lib2to3", "turtledemo") or "tests" in rel:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        # long modules become several documents, so no single file dominates the held-out split
        docs.extend(_paragraph_groups(text, 6000))
    return docs


def dictionary_docs() -> list[str]:
    with gzip.open("/usr/share/dictd/gcide.dict.dz", "rt", encoding="utf-8", errors="replace") as f:
        text = f.read()
    start = text.find("Begin file 1 of 26")
    start = text.find("\n\n", text.find("     This electronic dictionary", start)) if start >= 0 else 0
    text = text[start:]
    # drop the per-letter licence banners that repeat through the file
    text = re.sub(r"Begin file \d+ of 26.*?\* \* \* \* \* \* \* \* \* \* \* \* \* \* \* \* \* \* \* \*\n", "",
                  text, flags=re.S)
    return _paragraph_groups(text, 1500)


def docs_docs(lang: str) -> list[str]:
    with gzip.open(f"/usr/share/debian-reference/debian-reference.{lang}.txt.gz", "rt", encoding="utf-8",
                   errors="replace") as f:
        text = f.read()
    return _paragraph_groups(text, 1500)


def quotes_docs() -> list[str]:
    root = Path("/usr/share/games/fortunes")
    docs = []
    for path in sorted(root.iterdir()):
        if path.suffix in (".dat", ".u8") or path.is_symlink() or not path.is_file() or path.name in ("ascii-art", "art"):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        quotes = [q.strip("\n") for q in re.split(r"^%\s*$", text, flags=re.M) if q.strip()]
        for i in range(0, len(quotes), 4):  # four quotations per document
            docs.append("\n%\n".join(quotes[i:i + 4]))
    return docs


DOMAINS = {
    "code": code_docs,
    "dictionary": dictionary_docs,
    "docs-en": lambda: docs_docs("en"),
    "docs-de": lambda: docs_docs("de"),
    "docs-fr": lambda: docs_docs("fr"),
    "quotes": quotes_docs,
}


def _is_heldout(doc: str) -> bool:
    return int(hashlib.sha1(doc.encode("utf-8", "replace")).hexdigest()[:8], 16) % HELDOUT_ONE_IN == 0


def _subsample(docs: list[str], max_bytes: int) -> list[str]:
    """Every k-th document so the domain fits in max_bytes and still spans the whole source."""
    total = sum(len(d.encode()) for d in docs)
    if total <= max_bytes:
        return docs
    step = total / max_bytes
    picked, acc = [], 0.0
    for i, doc in enumerate(docs):
        if i >= acc:
            picked.append(doc)
            acc += step
    return picked


def _licence_summary(pkg: str) -> tuple[str, str]:
    text = Path(f"/usr/share/doc/{pkg}/copyright").read_text(errors="replace")
    fields = re.findall(r"^License:\s*(\S.*)$", text, flags=re.M)
    if fields:
        return ", ".join(dict.fromkeys(f.strip() for f in fields)), text
    if "BSD copyright" in text or "Regents of the University of California" in text:
        return "BSD (University of California fortune(6) licence; see copyright for per-file notes)", text
    version = re.search(r"General Public License.{0,120}?either\s+version\s+(\d)", text, flags=re.S)
    if version:
        return f"GPL-{version.group(1)}+ (text; see copyright for the formatting software)", text
    if "GNU General Public License" in text:
        return "GPL (see copyright for version)", text
    return "see copyright file", text


def write_sources(manifest: dict, path: Path) -> None:
    lib = Path(sysconfig.get_paths()["stdlib"])
    lines = ["# Sources of the recorded-trace training corpus", "",
             "Built by `traces/recorded/build_corpus.py`. The corpus itself is not committed (it lives under the",
             "git-ignored `runs/corpus/`); only the model trained on it and the traces recorded from it are.", "",
             "| domain | source | package | version | licence (from its copyright file) | train bytes | held-out bytes |",
             "|---|---|---|---|---|---|---|"]
    pkg_of = {"dictionary": "dict-gcide", "docs-en": "debian-reference-en", "docs-de": "debian-reference-de",
              "docs-fr": "debian-reference-fr", "quotes": "fortunes"}
    names = {"code": "Python standard library source", "dictionary": "GCIDE (Collaborative International Dictionary of English)",
             "docs-en": "Debian Reference (en)", "docs-de": "Debian Reference (de)", "docs-fr": "Debian Reference (fr)",
             "quotes": "fortune cookie files"}
    details = []
    for domain, stats in manifest["domains"].items():
        if domain == "code":
            pkg, version = "(interpreter)", sys.version.split()[0]
            licence = "PSF License Agreement (Python Software Foundation License Version 2)"
            details.append(f"### code\n\nFrom `{lib}` (`{lib / 'LICENSE.txt'}`): {licence}.\n")
        else:
            pkg = pkg_of[domain]
            version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True,
                                     text=True).stdout.strip() or "?"
            licence, text = _licence_summary(pkg)
            excerpt = "\n".join(line for line in text.splitlines() if re.search(
                r"licen[cs]e|copyright|GPL|BSD|redistribut", line, re.I))[:900]
            details.append(f"### {domain} (`{pkg}`)\n\nFrom `/usr/share/doc/{pkg}/copyright`:\n\n```\n{excerpt}\n```\n")
        lines.append(f"| {domain} | {names[domain]} | {pkg} | {version} | {licence} | {stats['train_bytes']} | "
                     f"{stats['heldout_bytes']} |")
    lines += ["", "Nothing from these sources is committed verbatim. The model in `traces/recorded/model/` was trained",
              "on them, and the recorded trace's `token_ids` encode its prompts -- short excerpts (64-96 tokens)",
              "of the held-out documents -- plus the model's own continuations; decoding them with the model's",
              "tokenizer gives those excerpts back. Whoever redistributes the trace or the model should keep this",
              "file with it.", "", "## Licence excerpts", ""] + details
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/corpus")
    parser.add_argument("--max-mb", type=float, default=3.0, help="cap per domain (train + held-out)")
    parser.add_argument("--no-install", action="store_true", help="fail instead of apt-get installing")
    parser.add_argument("--sources-md", default=str(HERE / "SOURCES.md"))
    args = parser.parse_args(argv)
    ensure_packages(not args.no_install)
    out = Path(args.out)
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "heldout").mkdir(parents=True, exist_ok=True)
    manifest = {"domains": {}, "heldout_one_in": HELDOUT_ONE_IN, "max_mb": args.max_mb}
    for domain, builder in DOMAINS.items():
        docs = _subsample(builder(), int(args.max_mb * 1e6))
        train = [d for d in docs if not _is_heldout(d)]
        held = [d for d in docs if _is_heldout(d)]
        for split, items in (("train", train), ("heldout", held)):
            (out / split / f"{domain}.txt").write_text(DOC_SEP.join(items) + "\n", encoding="utf-8")
        manifest["domains"][domain] = {"train_docs": len(train), "heldout_docs": len(held),
                                       "train_bytes": sum(len(d.encode()) for d in train),
                                       "heldout_bytes": sum(len(d.encode()) for d in held)}
        print(f"{domain:12s} train {len(train):6d} docs {manifest['domains'][domain]['train_bytes']:>9d} B   "
              f"held-out {len(held):5d} docs")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    write_sources(manifest, Path(args.sources_md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
