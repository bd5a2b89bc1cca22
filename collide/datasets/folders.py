"""Image folders (ImageNet layout: one subfolder per class) and the bundled photos.

Offline, scikit-image and scikit-learn ship a few real photos; :func:`bundled_corpus`
lays them out as a tiny image folder, so the RGB pipeline runs and is tested without
ImageNet.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from collide.errors import DataError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")  # compared lower-case: .JPG and .JPEG count


def list_folder(root: str | Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (sorted) and (path, class index) of every image, sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist: point image_root at an ImageNet-style folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root} has no class subfolders: expected <root>/<class>/<image>.jpg")
    items: list[tuple[Path, int]] = []
    for k, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)
        if not files:
            kinds = ", ".join(EXTENSIONS[:5])
            raise DataError(f"class folder {root / name} holds no images ({kinds}): add some or remove it")
        items.extend((f, k) for f in files)
    return classes, items


def pick_images(root: str | Path, *, target: str = "", per_class: int = 0,
                need_other: bool = True) -> list[dict[str, str]]:
    """Targets in an image folder, each with an image of another class to start from.

    The target is ``target`` (a path inside ``root``), else the first image of the first
    class; ``per_class`` > 0 takes the first that many of every class instead. Each
    target's ``other`` is the first image of another class. ``root`` may also be a single
    image: it is the one target, and has no other (``need_other`` must then be False).
    """
    if Path(root).is_file():
        if need_other:
            raise DataError(f"{root} is a single image: an 'other' init needs an image folder with a second class")
        return [{"target_path": str(root), "target_class_name": Path(root).stem, "other_path": str(root),
                 "other_class_name": Path(root).stem}]
    classes, items = list_folder(root)
    if len(classes) < 2 and need_other:
        raise DataError(f"{root} has one class: an 'other' init needs a second class")
    if target:
        wanted = str(root).rstrip("/") + "/" + target.lstrip("/")
        matches = [k for k, (p, _) in enumerate(items) if str(p) == wanted or str(p).endswith(target)]
        if not matches:
            raise DataError(f"target {target!r} is not an image under {root}")
        picked = matches[:1]
    elif per_class:
        picked = [k for c in range(len(classes)) for k in [i for i, (_, cc) in enumerate(items) if cc == c][:per_class]]
    else:
        picked = [0]
    out = []
    for t in picked:
        other = next((k for k, (_, c) in enumerate(items) if c != items[t][1]), t)
        out.append({"target_path": str(items[t][0]), "target_class_name": classes[items[t][1]],
                    "other_path": str(items[other][0]), "other_class_name": classes[items[other][1]]})
    return out


def check_images(paths: list[str | Path]) -> None:
    """Decode every image of ``paths`` in full, failing on the first that cannot be read:
    a bad file found here costs nothing, found after a solve it costs the solve."""
    from PIL import Image

    for path in dict.fromkeys(str(p) for p in paths):
        try:
            with Image.open(path) as im:
                im.load()
        except (OSError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
            raise DataError(f"cannot read image {path}: {exc}; replace or remove it") from None


def load_image(path: str | Path, size: int, *, channels: int = 3) -> torch.Tensor:
    """An RGB (or, with ``channels=1``, grey) image, shorter side resized to ``size`` and
    centre-cropped. -> (channels, size, size) in [0, 1]"""
    from PIL import Image

    if channels not in (1, 3):
        raise DataError(f"expected 1 or 3 image channels, got {channels}")
    try:
        with Image.open(path) as im:
            im = im.convert("RGB" if channels == 3 else "L")
            w, h = im.size
            scale = size / min(w, h)
            im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
            w, h = im.size
            left, top = (w - size) // 2, (h - size) // 2
            im = im.crop((left, top, left + size, top + size))
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except OSError as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc
    arr = arr if arr.ndim == 3 else arr[..., None]
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def load_labelled_folder(root: str | Path, *, size: int,
                         channels: int) -> tuple[torch.Tensor, torch.Tensor, list[Path]]:
    """Every image of an image folder whose class folders are named by their integer label
    (``<root>/3/a.png`` is labelled 3), at ``size`` px with ``channels`` channels, in
    :func:`list_folder`'s order, with their paths.

    Raises:
        DataError: a missing or empty folder, an unreadable image, or a class folder whose
            name is not an integer label.

    Shapes: -> images (n, channels, size, size) in [0, 1]; labels (n,) int64
    """
    classes, items = list_folder(root)
    bad = [name for name in classes if not name.isdigit()]
    if bad:
        raise DataError(f"class folder {Path(root) / bad[0]} is not named by an integer label: name each class "
                        f"folder of {root} by the label the classifier gives it (0, 1, ...)")
    images = torch.stack([load_image(path, size, channels=channels) for path, _ in items])
    labels = torch.tensor([int(classes[k]) for _, k in items], dtype=torch.int64)
    return images, labels, [path for path, _ in items]


def bundled_corpus(dest: str | Path, *, size: int = 64) -> Path:
    """Write the photos that scikit-image and scikit-learn ship as an image folder.

    Each photo is its own class, plus flipped and shifted copies so that every class
    has several images. Returns ``dest``.
    """
    from PIL import Image
    from skimage import data as skdata

    photos: dict[str, np.ndarray] = {}
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "colorwheel"):
        try:
            photos[name] = getattr(skdata, name)()[..., :3]
        except Exception:  # a photo that needs a download (pooch) is skipped offline
            continue
    try:
        from sklearn.datasets import load_sample_images

        for name, img in zip(("china", "flower"), load_sample_images().images, strict=True):
            photos[name] = img
    except Exception:
        pass
    if len(photos) < 2:
        raise DataError("fewer than two bundled photos could be loaded: install scikit-image")
    dest = Path(dest)
    for name, img in photos.items():
        folder = dest / name
        folder.mkdir(parents=True, exist_ok=True)
        variants = [img, img[:, ::-1], img[::-1, :], np.roll(img, img.shape[1] // 3, axis=1)]
        for k, v in enumerate(variants):
            Image.fromarray(np.ascontiguousarray(v)).resize((size, size)).save(folder / f"{name}_{k}.png")
    return dest
