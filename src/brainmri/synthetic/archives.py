"""Write the embedded demo data: phantoms in the four real sources' archive formats, faults included.

Why: a fresh clone must run the whole pipeline offline, and the merge and
dedup stages must meet, in the demo, every problem the real archives have.
So each demo zip copies its real source's layout, and the faults of the real
data are planted on purpose and recorded in ``demo_truth.json``.

The archives (``cfg.images_per_class`` = n distinct phantoms per class and
source, ``cfg.image_size`` = s, the side of every JPEG):

``demo_figshare.zip``
    ``1.mat``, ``2.mat``, ... at the zip root: MATLAB v7.3 files (see
    :mod:`brainmri.synthetic.matfile`) with 512x512 int16 images, label
    1 meningioma / 2 glioma / 3 pituitary, no no-tumour class. Patients of
    2-4 slices share a ``PID`` and have consecutive numbers.
``demo_sartaj.zip``
    ``Training/<class>/gg (i).jpg`` (glioma), ``m (i).jpg`` (meningioma),
    ``p (i).jpg`` (pituitary), ``image (i).jpg`` (no tumour), and
    ``Testing/<class>/image(i).jpg``; classes ``glioma_tumor``,
    ``meningioma_tumor``, ``no_tumor``, ``pituitary_tumor``.
``demo_br35h.zip``
    ``yes/y<i>.jpg`` (a glioma, meningioma or pituitary phantom; the real set
    does not say which, so the label is ``tumor_unknown``) and ``no/no<i>.jpg``.
``demo_kaggle.zip``
    ``Training/<class>/Tr-<xx>_<NNNN>.jpg`` and ``Testing/<class>/Te-<xx>_<NNNN>.jpg``,
    classes ``glioma`` ``meningioma`` ``notumor`` ``pituitary`` (xx = gl me no pi,
    numbers from 0010 as in the real set). Like the real combined set it is a
    union: resized, re-encoded copies of most figshare slices, byte copies of
    most SARTAJ images, re-encoded copies of most Br35H ``no`` images, and
    n // 4 phantoms of its own per class.

Planted faults, as in the real data: byte-identical copies under another
name within each source (SARTAJ's in the other split); re-encoded copies of
Training images in the Kaggle Testing split (the real split leaks); copies
across sources; three images copied under a *different* class (conflicting
labels); and bad files: a truncated JPEG, a zero-byte ``.jpg``, a text file
named ``.jpg``, a 1x1-pixel JPEG, a copy in
``Testing/meningioma/.ipynb_checkpoints/`` and a truncated ``.mat``. JPEGs
are a mix of grey and RGB (grey content in three channels) at qualities
70-95.

Reproducibility: the same ``cfg`` gives byte-identical zips (fixed member
timestamps 1980-01-01, sorted members, fixed MATLAB header date, no HDF5
timestamps, deterministic JPEG and gzip encoders) with the same library
versions and CPU family (numpy's float32 maths may differ in the last bit
elsewhere, which can move a pixel by one grey level). Zips are written to a temporary name and renamed, so a crash never
leaves a half-written archive under its final name.

``demo_truth.json`` (written next to the zips; ``ref`` = ``{"archive", "member"}``,
archive being ``figshare`` ``kaggle`` ``sartaj`` or ``br35h``)::

    {
      "schema": 1,
      "config": {"seed", "images_per_class", "image_size"},
      "archives": {"figshare": "demo_figshare.zip", ...},
      "images": [                       # every member that is a usable labelled image
        {"archive", "member",
         "label",        # what the archive says, as a project label (CLASSES or "tumor_unknown")
         "true_class",   # the phantom's class; differs from label for conflicting copies and Br35H yes
         "phantom",      # "ph00012": shared by all copies of one rendered slice
         "patient",      # "pt0004": shared by the slices of one patient
         "pid",          # figshare PID stored in the file, else null
         "width", "height",
         "box",          # YOLO-style [x_centre, y_centre, width, height] of the tumour, normalised; null if none
         "copy_of",      # ref of the member this one was made from, else null
         "how"}          # null, "exact" (same bytes), "reencoded" (decoded, saved again) or "resized" (and re-encoded)
      ],
      "exact_copies":        [{"original": ref, "copy": ref}],  # same archive, same bytes
      "near_copies":         [{"original": ref, "copy": ref}],  # same archive, re-encoded, same label
      "cross_source_copies": [{"original": ref, "copy": ref, "how"}],
      "conflicting_labels":  [{"original": ref + {"label"}, "copy": ref + {"label"}}],
      "bad_files":           [{"archive", "member", "fault", "copy_of"}]
    }

``fault`` is one of ``truncated_jpeg`` and ``truncated_mat`` (the first
60% / 40% of the ``copy_of`` file), ``empty_file``, ``not_an_image`` (a Git
LFS pointer), ``tiny_image`` (a valid 1x1 JPEG) and ``unexpected_folder`` (a
byte copy of ``copy_of`` inside ``.ipynb_checkpoints``). Bad files are not in
``images``: merge is expected to reject them, the 1x1 image by its minimum
side and the checkpoint copy by its hidden folder, though both decode. All
members sharing a ``phantom`` are duplicates; members with different
phantoms are never near-duplicates (see :mod:`brainmri.synthetic.cohort`).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from brainmri.config import CLASSES, SyntheticConfig
from brainmri.synthetic.cohort import Cohort, Phantom
from brainmri.synthetic.matfile import FIGSHARE_LABELS, write_figshare_mat
from brainmri.synthetic.phantom import TUMOUR_LABELS

ARCHIVE_NAMES: dict[str, str] = {
    "figshare": "demo_figshare.zip",
    "kaggle": "demo_kaggle.zip",
    "sartaj": "demo_sartaj.zip",
    "br35h": "demo_br35h.zip",
}
TRUTH_NAME = "demo_truth.json"
FIGSHARE_SIZE = 512
ZIP_TIME = (1980, 1, 1, 0, 0, 0)

SARTAJ_FOLDERS = {
    "glioma": "glioma_tumor",
    "meningioma": "meningioma_tumor",
    "no_tumor": "no_tumor",
    "pituitary": "pituitary_tumor",
}
SARTAJ_PREFIXES = {"glioma": "gg", "meningioma": "m", "no_tumor": "image", "pituitary": "p"}
KAGGLE_FOLDERS = {"glioma": "glioma", "meningioma": "meningioma", "no_tumor": "notumor", "pituitary": "pituitary"}
KAGGLE_CODES = {"glioma": "gl", "meningioma": "me", "no_tumor": "no", "pituitary": "pi"}

_TESTING_SHARE = 0.2
"""Share of each class put in ``Testing`` by the archives that have splits (about the real sets' share)."""
_COPIED_SHARE = 0.9
"""Share of each source's images that reappear in the Kaggle set ("most", as measured on the real data)."""

_LFS_POINTER = (
    b"version https://git-lfs.github.com/spec/v1\n"
    b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
    b"size 12345\n"
)
"""A text file under an image name, as a clone without ``git lfs pull`` leaves behind."""


@dataclass(eq=False)
class _Item:
    """One archive member before it has a name.

    ``label`` is what the archive says (None for bad files); ``split`` is the
    first folder of the member (``Training``/``Testing`` where there are splits).
    """

    data: bytes
    label: str | None
    phantom: Phantom | None = None
    width: int = 0
    height: int = 0
    pid: str | None = None
    copy_of: _Item | None = None
    how: str | None = None
    fault: str | None = None
    split: str = ""
    archive: str = ""
    member: str = ""

    def ref(self) -> dict[str, str]:
        return {"archive": self.archive, "member": self.member}


@dataclass(eq=False)
class _Folder:
    """Members of one archive folder, named by ``namer(i)`` once all are known (in shuffled order if ``shuffle``)."""

    archive: str
    path: str
    namer: Callable[[int], str]
    shuffle: bool = True
    items: list[_Item] = field(default_factory=list)

    def add(self, item: _Item) -> _Item:
        item.split = self.path.split("/")[0]
        self.items.append(item)
        return item


class _Demo:
    """Collects the folders of all four archives, then names the members and writes zips and truth."""

    def __init__(self, layout: np.random.Generator) -> None:
        self.layout = layout
        self.folders: dict[tuple[str, str], _Folder] = {}
        self.late: list[_Item] = []

    def folder(self, archive: str, path: str, namer: Callable[[int], str], shuffle: bool = True) -> _Folder:
        key = (archive, path)
        if key not in self.folders:
            self.folders[key] = _Folder(archive, path, namer, shuffle)
        return self.folders[key]

    def name_members(self) -> None:
        for folder in self.folders.values():
            items = folder.items
            if folder.shuffle:
                items = [items[i] for i in self.layout.permutation(len(items))]
            for index, item in enumerate(items):
                item.archive = folder.archive
                item.member = f"{folder.path}/{folder.namer(index)}" if folder.path else folder.namer(index)

    def items(self) -> list[_Item]:
        return [item for folder in self.folders.values() for item in folder.items] + self.late


def write_demo_archives(out_dir: Path, cfg: SyntheticConfig) -> dict[str, Path]:
    """Write the four demo zips and ``demo_truth.json`` into ``out_dir``; return the zips by source kind.

    Deterministic in ``cfg`` (see the module docstring for layouts, faults and the truth schema).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cohort = Cohort(np.random.default_rng([cfg.seed, 0]))
    demo = _Demo(np.random.default_rng([cfg.seed, 1]))
    n, size = cfg.images_per_class, cfg.image_size

    figshare = _figshare(demo, cohort, n)
    sartaj = _sartaj(demo, cohort, n, size)
    br35h_no = _br35h(demo, cohort, n, size)
    _kaggle(demo, cohort, n, size, figshare, sartaj, br35h_no)
    demo.name_members()
    _checkpoint_copy(demo)

    paths = {}
    for kind, name in ARCHIVE_NAMES.items():
        members = {item.member: item.data for item in demo.items() if item.archive == kind}
        paths[kind] = out_dir / name
        _write_zip(paths[kind], members, directories=kind != "figshare")
    truth = json.dumps(_truth(demo.items(), cfg), indent=1, sort_keys=True)
    _write_atomic(out_dir / TRUTH_NAME, truth.encode() + b"\n")
    return paths


# --- the four sources -------------------------------------------------------


def _figshare(demo: _Demo, cohort: Cohort, n: int) -> list[_Item]:
    """Patients of 2-4 consecutive slices per tumour class, plus a byte copy and a truncated file."""
    layout = demo.layout
    patients = []
    for label in TUMOUR_LABELS:
        remaining = n
        while remaining:
            slices = min(remaining, int(layout.integers(2, 5)))
            patients.append(cohort.patient(label, FIGSHARE_SIZE, slices))
            remaining -= slices
    pids = [str(p) for p in layout.choice(np.arange(100000, 1000000), size=len(patients), replace=False)]
    originals = []
    for index in layout.permutation(len(patients)):
        # One scanner setting per patient: the brightest slice peaks somewhere in 700-2000, as MRI magnitudes do.
        scale = layout.uniform(700.0, 2000.0) / max(float(p.image.max()) for p in patients[index])
        for phantom in patients[index]:
            image = np.round(phantom.image * scale).astype(np.int16)
            code = FIGSHARE_LABELS[phantom.label]
            data = write_figshare_mat(image, code, pids[index], phantom.mask, _border(phantom.mask))
            originals.append(_Item(data, phantom.label, phantom, FIGSHARE_SIZE, FIGSHARE_SIZE, pid=pids[index]))
    items = list(originals)
    for index in layout.choice(len(originals), size=_exact_count(n), replace=False):
        items.insert(int(layout.integers(len(items) + 1)), _exact(originals[index]))
    broken = originals[int(layout.integers(len(originals)))]
    truncated = _Item(broken.data[: len(broken.data) * 2 // 5], None, copy_of=broken, fault="truncated_mat")
    items.insert(int(layout.integers(len(items) + 1)), truncated)
    root = demo.folder("figshare", "", lambda i: f"{i + 1}.mat", shuffle=False)
    for item in items:
        root.add(item)
    return originals


def _sartaj(demo: _Demo, cohort: Cohort, n: int, size: int) -> list[_Item]:
    """n images per class split Training/Testing, with byte copies, a conflicting copy, an empty file, a 1x1 image."""
    layout = demo.layout
    originals = []
    for label in CLASSES:
        phantoms = [cohort.single(label, size) for _ in range(n)]
        testing = _testing(layout, n)
        for index, phantom in enumerate(phantoms):
            item = _jpeg_item(phantom, label, _encode(phantom.image, layout, rgb_share=0.5, qualities=(80, 90, 95)))
            originals.append(_sartaj_folder(demo, "Testing" if index in testing else "Training", label).add(item))
    # Byte copies land in the other split: the real set leaks between its splits too.
    other_split = {"Training": "Testing", "Testing": "Training"}
    _plant_exact_copies(demo, originals, n, lambda item: _sartaj_folder(demo, other_split[item.split], item.label))
    glioma = [item for item in originals if item.label == "glioma"]
    conflict = _reencoded(glioma[int(layout.integers(len(glioma)))], layout, label="meningioma")
    _sartaj_folder(demo, "Training", "meningioma").add(conflict)
    _sartaj_folder(demo, "Training", "no_tumor").add(_Item(b"", None, fault="empty_file"))
    tiny = _encode(np.zeros((1, 1), np.float32), layout, rgb_share=0.0, qualities=(90,))
    _sartaj_folder(demo, "Testing", "pituitary").add(_Item(tiny, None, fault="tiny_image"))
    return originals


def _br35h(demo: _Demo, cohort: Cohort, n: int, size: int) -> list[_Item]:
    """n tumour images of random type under ``yes`` and n under ``no``, byte copies, a text file named .jpg."""
    layout = demo.layout
    yes = demo.folder("br35h", "yes", lambda i: f"y{i}.jpg")
    no = demo.folder("br35h", "no", lambda i: f"no{i}.jpg")
    for _ in range(n):
        phantom = cohort.single(TUMOUR_LABELS[int(layout.integers(3))], size)
        yes.add(_jpeg_item(phantom, "tumor_unknown", _encode(phantom.image, layout, 0.7, (75, 85, 95))))
    for _ in range(n):
        phantom = cohort.single("no_tumor", size)
        no.add(_jpeg_item(phantom, "no_tumor", _encode(phantom.image, layout, 0.7, (75, 85, 95))))
    originals_no = list(no.items)
    _plant_exact_copies(demo, yes.items + originals_no, n, lambda item: yes if item.label == "tumor_unknown" else no)
    no.add(_Item(_LFS_POINTER, None, fault="not_an_image"))
    return originals_no


def _kaggle(
    demo: _Demo,
    cohort: Cohort,
    n: int,
    size: int,
    figshare: list[_Item],
    sartaj: list[_Item],
    br35h_no: list[_Item],
) -> None:
    """The combined set: most of the other sources' images, own phantoms, leaks, conflicts, bad files."""
    layout = demo.layout
    pool = [_resized(item, size, layout, item.label) for item in figshare if layout.random() < _COPIED_SHARE]
    pool += [_exact(item) for item in sartaj if layout.random() < _COPIED_SHARE]
    pool += [_reencoded(item, layout, "no_tumor") for item in br35h_no if layout.random() < _COPIED_SHARE]
    own = {label: [] for label in CLASSES}
    for label in CLASSES:
        for _ in range(max(1, n // 4)):
            phantom = cohort.single(label, size)
            own[label].append(_jpeg_item(phantom, label, _encode(phantom.image, layout, 0.5, (85, 90, 95))))
    originals = []
    for label in CLASSES:
        members = [item for item in pool if item.label == label] + own[label]
        testing = _testing(layout, len(members))
        for index, item in enumerate(members):
            originals.append(_kaggle_folder(demo, "Testing" if index in testing else "Training", label).add(item))

    # The real Testing split leaks: re-encoded twins of Training images.
    for label in CLASSES:
        training = [item for item in originals if item.label == label and item.split == "Training"]
        for index in layout.choice(len(training), size=min(len(training), max(1, n // 15)), replace=False):
            _kaggle_folder(demo, "Testing", label).add(_reencoded(training[index], layout, label))
    _plant_exact_copies(demo, originals, n, lambda item: _kaggle_folder(demo, item.split, item.label))

    # Conflicting labels: an own pituitary image re-encoded as meningioma, a figshare meningioma resized as glioma.
    _kaggle_folder(demo, "Training", "meningioma").add(_reencoded(own["pituitary"][0], layout, "meningioma"))
    meningioma = [item for item in figshare if item.label == "meningioma"]
    source = meningioma[int(layout.integers(len(meningioma)))]
    _kaggle_folder(demo, "Training", "glioma").add(_resized(source, size, layout, "glioma"))

    gliomas = [item for item in originals if item.label == "glioma"]
    cut = gliomas[int(layout.integers(len(gliomas)))]
    truncated = _Item(cut.data[: len(cut.data) * 3 // 5], None, copy_of=cut, fault="truncated_jpeg")
    _kaggle_folder(demo, "Training", "glioma").add(truncated)


def _checkpoint_copy(demo: _Demo) -> None:
    """A Jupyter checkpoint copy of a Testing meningioma image, as in the real Kaggle zip (named after its original)."""
    folder = demo.folders[("kaggle", "Testing/meningioma")]
    original = next(item for item in folder.items if item.fault is None)
    stem = original.member.rsplit("/", 1)[1].removesuffix(".jpg")
    copy = _Item(original.data, None, copy_of=original, fault="unexpected_folder")
    copy.archive, copy.member = "kaggle", f"Testing/meningioma/.ipynb_checkpoints/{stem}-checkpoint.jpg"
    demo.late.append(copy)


# --- folders and naming -----------------------------------------------------


def _sartaj_folder(demo: _Demo, split: str, label: str) -> _Folder:
    prefix = "image" if split == "Testing" else f"{SARTAJ_PREFIXES[label]} "  # image(1).jpg, "gg (1).jpg"
    return demo.folder("sartaj", f"{split}/{SARTAJ_FOLDERS[label]}", lambda i: f"{prefix}({i + 1}).jpg")


def _kaggle_folder(demo: _Demo, split: str, label: str) -> _Folder:
    prefix = f"{split[:2]}-{KAGGLE_CODES[label]}"
    return demo.folder("kaggle", f"{split}/{KAGGLE_FOLDERS[label]}", lambda i: f"{prefix}_{i + 10:04d}.jpg")


def _testing(layout: np.random.Generator, count: int) -> set[int]:
    """Which of a class's ``count`` members go to ``Testing``: :data:`_TESTING_SHARE` of them, at least one."""
    return set(layout.choice(count, size=max(1, round(count * _TESTING_SHARE)), replace=False).tolist())


def _exact_count(n: int) -> int:
    """How many byte copies to plant per source: one in twenty, at least one."""
    return max(1, n // 20)


def _plant_exact_copies(demo: _Demo, originals: list[_Item], n: int, folder_of: Callable[[_Item], _Folder]) -> None:
    """Byte-identical copies of a few distinct originals, each in the folder ``folder_of`` picks."""
    for index in demo.layout.choice(len(originals), size=_exact_count(n), replace=False):
        folder_of(originals[index]).add(_exact(originals[index]))


# --- images and copies ------------------------------------------------------


def _encode(image: np.ndarray, layout: np.random.Generator, rgb_share: float, qualities: tuple[int, ...]) -> bytes:
    """JPEG of a float image in [0, 1], grey or (with probability ``rgb_share``) grey content in RGB."""
    pixels = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
    return _jpeg(Image.fromarray(pixels, mode="L"), layout.random() < rgb_share, int(layout.choice(qualities)))


def _jpeg(image: Image.Image, rgb: bool, quality: int) -> bytes:
    buffer = io.BytesIO()
    (image.convert("RGB") if rgb else image.convert("L")).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _jpeg_item(phantom: Phantom, label: str, data: bytes) -> _Item:
    height, width = phantom.image.shape
    return _Item(data, label, phantom, width, height)


def _exact(original: _Item) -> _Item:
    """A byte-identical copy, to be added to a folder (``original`` must not be named yet)."""
    return replace(original, copy_of=original, how="exact")


def _reencoded(original: _Item, layout: np.random.Generator, label: str) -> _Item:
    """The original decoded and saved again at another quality, possibly switching grey/RGB."""
    image = Image.open(io.BytesIO(original.data))
    data = _jpeg(image, layout.random() < 0.5, int(layout.choice((70, 80, 88, 93))))
    return _Item(data, label, original.phantom, original.width, original.height, copy_of=original, how="reencoded")


def _resized(original: _Item, size: int, layout: np.random.Generator, label: str) -> _Item:
    """A figshare slice as the Kaggle redistributors made it: 8-bit by the slice maximum, resized, JPEG."""
    image = original.phantom.image
    pixels = np.clip(np.round(image / max(float(image.max()), 1e-6) * 255.0), 0, 255).astype(np.uint8)
    small = Image.fromarray(pixels, mode="L").resize((size, size), Image.Resampling.BILINEAR)
    data = _jpeg(small, layout.random() < 0.3, int(layout.choice((85, 90, 95))))
    return _Item(data, label, original.phantom, size, size, copy_of=original, how="resized")


def _border(mask: np.ndarray, points: int = 60) -> np.ndarray:
    """``[r1, c1, r2, c2, ...]`` (MATLAB 1-based) of up to ``points`` outline pixels, in angular order."""
    edge = mask & ~ndimage.binary_erosion(mask)
    rows, cols = np.nonzero(edge)
    if rows.size == 0:
        return np.zeros(0)
    order = np.argsort(np.arctan2(rows - rows.mean(), cols - cols.mean()), kind="stable")
    keep = order[np.linspace(0, order.size - 1, min(points, order.size)).astype(int)]
    return np.stack([rows[keep] + 1.0, cols[keep] + 1.0], axis=1).ravel()


def _box(mask: np.ndarray) -> list[float] | None:
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return None
    height, width = mask.shape
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    return [
        round((left + right) / 2 / width, 5),
        round((top + bottom) / 2 / height, 5),
        round((right - left) / width, 5),
        round((bottom - top) / height, 5),
    ]


# --- output -----------------------------------------------------------------


def _truth(items: list[_Item], cfg: SyntheticConfig) -> dict:
    """The ground truth record described in the module docstring."""
    images, exact, near, cross, conflicts, bad = [], [], [], [], [], []
    for item in sorted(items, key=lambda x: (x.archive, x.member)):
        if item.fault is not None:
            bad.append({**item.ref(), "fault": item.fault, "copy_of": item.copy_of.ref() if item.copy_of else None})
            continue
        images.append(
            {
                **item.ref(),
                "label": item.label,
                "true_class": item.phantom.label,
                "phantom": item.phantom.id,
                "patient": item.phantom.patient,
                "pid": item.pid,
                "width": item.width,
                "height": item.height,
                "box": _box(item.phantom.mask),
                "copy_of": item.copy_of.ref() if item.copy_of else None,
                "how": item.how,
            }
        )
        if item.copy_of is None:
            continue
        pair = {"original": item.copy_of.ref(), "copy": item.ref()}
        if item.copy_of.label != item.label:
            original = {**pair["original"], "label": item.copy_of.label}
            conflicts.append({"original": original, "copy": {**pair["copy"], "label": item.label}})
        if item.copy_of.archive != item.archive:
            cross.append({**pair, "how": item.how})
        elif item.how == "exact":
            exact.append(pair)
        elif item.copy_of.label == item.label:
            near.append(pair)
    return {
        "schema": 1,
        "config": cfg.model_dump(),
        "archives": dict(ARCHIVE_NAMES),
        "images": images,
        "exact_copies": exact,
        "near_copies": near,
        "cross_source_copies": cross,
        "conflicting_labels": conflicts,
        "bad_files": bad,
    }


def _write_zip(path: Path, members: dict[str, bytes], directories: bool) -> None:
    """A reproducible zip: sorted members, fixed timestamps and attributes.

    Members are stored uncompressed, as in the real Kaggle zip: neither JPEGs
    nor the gzip-compressed HDF5 inside ``.mat`` files shrink further (about
    4%), and deflating them would cost a tenth of the generation time.
    Image-folder archives get explicit directory entries, as the real Kaggle
    zip has.
    """
    entries = dict(members)
    if directories:
        for name in members:
            parts = name.split("/")[:-1]
            for depth in range(1, len(parts) + 1):
                entries.setdefault("/".join(parts[:depth]) + "/", b"")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
            info.create_system = 3
            if name.endswith("/"):
                info.external_attr = (0o40755 << 16) | 0x10
            else:
                info.external_attr = 0o644 << 16
            archive.writestr(info, entries[name])
    _write_atomic(path, buffer.getvalue())


def _write_atomic(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)
