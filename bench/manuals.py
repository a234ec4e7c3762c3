"""Real PDF manuals for retrieval development sets, fetched from pinned Debian packages.

``python -m bench.manuals fetch r-manuals`` puts the collection's PDFs in
``~/.cache/rag-stream/manuals/r-manuals/``; ``python -m bench.manuals list`` shows what is known and cached.

The dev sets in ``bench/devsets/`` name a file and a physical page, so they are only
meaningful against the very same bytes: each collection pins a Debian bookworm package
version and every PDF's sha256, and a file that does not match is an error, not a warning.
Debian keeps old versions on snapshot.debian.org, so the pins stay reproducible after
bookworm moves on; ``apt-get download`` needs no root and verifies the .deb against the
signed archive index, which is why it is used rather than a plain HTTP download.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Manual:
    """One PDF of a collection: its name in the cache, where it sits in the .deb, and its pinned bytes."""

    name: str
    member: str  # path inside the package; a ``.gz`` member is decompressed
    sha256: str
    pages: int


@dataclass(frozen=True)
class Collection:
    package: str
    version: str
    manuals: tuple[Manual, ...]

    @property
    def pages(self) -> int:
        return sum(m.pages for m in self.manuals)


_R = "usr/share/R/doc/manual/"
_TEX = "usr/share/doc/texlive-doc/latex/"

COLLECTIONS: dict[str, Collection] = {
    # refman.pdf is left out: the same reference manual as fullrefman.pdf (58 bytes of metadata differ).
    "r-manuals": Collection("r-doc-pdf", "4.2.2.20221110-2", (
        Manual("R-FAQ.pdf", _R + "R-FAQ.pdf", "de8768520d4fb90dad64c28483ffb92dca7dd9d8dc8556905b35c2e62a939255", 52),
        Manual("R-admin.pdf", _R + "R-admin.pdf",
               "50e256b5f873bbee4c8482df3754fa8654f02ef693409fe5e30b2f114e3efe9f", 85),
        Manual("R-data.pdf", _R + "R-data.pdf", "9381a39ffeb8545a745c2618ba955b4ae4e10b9c8373cd5bc1984fff8318f8ca", 41),
        Manual("R-exts.pdf", _R + "R-exts.pdf", "792220b273d40e8629664d5dd0d6ae4151419d14f613a949aebe85b8c2a1f85c", 236),
        Manual("R-intro.pdf", _R + "R-intro.pdf",
               "337ccd0b490b1e66f7e783b45f4588d0599730b4206c0c051edfe1419c568c51", 113),
        Manual("R-ints.pdf", _R + "R-ints.pdf", "cdcca722b4de6682a9100550b4361dcd3dd41b5b274d97b9a6230572be63901f", 81),
        Manual("R-lang.pdf", _R + "R-lang.pdf", "4a6120ba505021d7c208078b575fe3f5d5dc91636dcf17de8a4208adda90d7dc", 69),
        Manual("fullrefman.pdf", _R + "fullrefman.pdf",
               "89150a81fb3d3a11223c3e184f38c92adf3e77067aee3661086cf3582cf9dce2", 2415),
    )),
    # English user guides with a real outline, all from one 50 MB package (pgfmanual would need 233 MB).
    "tex-manuals": Collection("texlive-latex-recommended-doc", "2022.20230122-3", (
        Manual("memman.pdf", _TEX + "memoir/memman.pdf",
               "9ac1b662ce46a3a8eeb74386c76b440687564c02b9783b8f5d490af4b5729277", 615),
        Manual("beameruserguide.pdf", _TEX + "beamer/beameruserguide.pdf",
               "9a1f87ab1036dec58ac19b59a27607d5ed51d115103cec41f8fd4d963ef9eb68", 234),
        Manual("listings.pdf", _TEX + "listings/listings.pdf",
               "9a6e55d925a56c2e84f131242b1d0aa607e22ea2c385539f5561b00bc2e94839", 63),
        Manual("fontspec.pdf", _TEX + "fontspec/fontspec.pdf",
               "811067aa38ccb352a77f58ce844896b1d9ea31b7e385f8e2bb13338ce812c33e", 66),
        Manual("xcolor.pdf", _TEX + "xcolor/xcolor.pdf",
               "d354360b1216cf8c9618571434a34e9e7683c2cec426e6156b4c5fb80af49e41", 66),
    )),
}


class FetchError(Exception):
    """The manuals could not be fetched or do not match their pinned hashes."""


def cache_dir(collection: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "rag-stream" / "manuals" / collection


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _collection(name: str) -> Collection:
    try:
        return COLLECTIONS[name]
    except KeyError:
        raise FetchError(f"unknown collection {name!r} (known: {', '.join(COLLECTIONS)})") from None


def _run(cmd: list[str], cwd: Path) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise FetchError(f"{cmd[0]} not found: bench.manuals needs a Debian-based system (apt-get, dpkg-deb)") from None
    if proc.returncode != 0:
        raise FetchError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{proc.stderr.strip()}")


def _download(coll: Collection, tmp: Path) -> Path:
    """The package's extracted tree: ``apt-get download`` (no root needed) into tmp, then ``dpkg-deb -x``."""
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise FetchError(f"{tool} not found: bench.manuals fetches {coll.package}={coll.version} with apt-get "
                             f"and dpkg-deb, so it needs a Debian-based system; elsewhere get that .deb from "
                             f"https://snapshot.debian.org/package/ and extract it yourself")
    spec = f"{coll.package}={coll.version}"
    try:
        _run(["apt-get", "download", spec], tmp)
    except FetchError as exc:
        raise FetchError(f"{exc}\n(is a Debian bookworm source configured, and was `apt-get update` run? "
                         f"the .deb is also on https://snapshot.debian.org/package/{coll.package}/)") from None
    debs = sorted(tmp.glob(f"{coll.package}_*.deb"))
    if not debs:
        raise FetchError(f"apt-get download {spec} left no .deb in {tmp}")
    root = tmp / "x"
    _run(["dpkg-deb", "-x", str(debs[0]), str(root)], tmp)
    return root


def _install(src: Path, manual: Manual, dest: Path) -> Path:
    """Copy (or gunzip) one member into dest, checking its hash before it takes the final name."""
    target = dest / manual.name
    part = target.with_name(target.name + ".part")
    opener = gzip.open if manual.member.endswith(".gz") else open
    with opener(src, "rb") as fin, part.open("wb") as fout:
        shutil.copyfileobj(fin, fout)
    got = sha256(part)
    if got != manual.sha256:
        part.unlink()
        raise FetchError(f"{manual.name}: sha256 {got} does not match the pinned {manual.sha256}")
    part.replace(target)
    return target


def fetch(collection: str, dest: Path | None = None) -> list[Path]:
    """The collection's PDFs in dest (default ``cache_dir(collection)``), downloading only when one is missing or
    differs from its pinned sha256, so a second call costs a few hashes."""
    coll = _collection(collection)
    dest = Path(dest) if dest is not None else cache_dir(collection)
    dest.mkdir(parents=True, exist_ok=True)
    paths = [dest / m.name for m in coll.manuals]
    todo = [m for m, p in zip(coll.manuals, paths, strict=True) if not p.is_file() or sha256(p) != m.sha256]
    if not todo:
        return paths
    with tempfile.TemporaryDirectory(prefix="rag-manuals-") as tmp:
        root = _download(coll, Path(tmp))
        for manual in todo:
            src = root / manual.member
            if not src.is_file():
                raise FetchError(f"{coll.package}={coll.version} has no {manual.member}")
            _install(src, manual, dest)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.manuals", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_fetch = sub.add_parser("fetch", help="download a collection's PDFs (skipped when cached and intact)")
    p_fetch.add_argument("collection", choices=sorted(COLLECTIONS))
    p_fetch.add_argument("--dest", type=Path, default=None, help="target folder (default: the cache folder)")
    sub.add_parser("list", help="the known collections, their documents and whether they are cached")
    args = parser.parse_args(argv)
    if args.command == "list":
        for name, coll in COLLECTIONS.items():
            folder = cache_dir(name)
            print(f"{name}: {coll.package}={coll.version}, {len(coll.manuals)} PDFs, {coll.pages} pages, {folder}")
            for m in coll.manuals:
                path = folder / m.name
                state = "missing" if not path.is_file() else ("cached" if sha256(path) == m.sha256 else "MISMATCH")
                print(f"  {m.name:<22} {m.pages:>5} pages  {state}")
        return 0
    try:
        paths = fetch(args.collection, args.dest)
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
