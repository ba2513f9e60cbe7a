"""A CSV of (image path, label) as a dataset, after a cleaning pass that reads and fully decodes
every image and drops, and reports, each row with a missing label, a missing file, bytes that are
not an image or a truncated/corrupt image, or the exact bytes of an earlier kept row (first kept)."""
from __future__ import annotations

import csv
import hashlib
import io
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from handlers.errors import ImageTooLarge, InvalidImage
from handlers.preprocess import decode_image
from model.image_files import MAX_FILE_BYTES, MAX_FILE_PIXELS, DatasetNotFound, load_image_file

REPORT_FIELDS = ("line", "path", "label", "reason", "detail")


@dataclass
class Dropped:
    line: int  # line number in the CSV file (the header is line 1)
    path: str
    label: str
    reason: str  # missing_label, unknown_label, missing_path, missing_file, unreadable_file,
    detail: str = ""  # not_an_image, truncated_or_corrupt, image_too_large, duplicate


@dataclass
class CleanReport:
    csv: str
    rows: int
    kept: int
    dropped: list[Dropped] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return dict(Counter(d.reason for d in self.dropped))

    def to_dict(self) -> dict:
        return {"csv": self.csv, "rows": self.rows, "kept": self.kept, "dropped_count": len(self.dropped),
                "counts": self.counts(), "dropped": [asdict(d) for d in self.dropped]}

    def write(self, path: Path) -> Path:
        """JSON (summary + rows) when `path` ends in .json, else CSV with one dropped row a line."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() == ".json":
            path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        else:
            with open(path, "w", newline="") as f:
                w = csv.DictWriter(f, REPORT_FIELDS)
                w.writeheader()
                w.writerows(asdict(d) for d in self.dropped)
        return path

    def summary(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.counts().items()))
        return (f"{self.csv}: kept {self.kept} of {self.rows} rows"
                + (f"; dropped {len(self.dropped)} ({counts})" if self.dropped else ""))


class CsvImageDataset:
    """(PIL image, int target) items with `.classes` (sorted labels unless given) and `.targets`."""

    def __init__(self, files: Sequence[Path], ids: Sequence[str], labels: Sequence[str],
                 classes: Sequence[str] | None, report: CleanReport):
        self.classes = list(classes) if classes else sorted(set(labels))
        index = {c: i for i, c in enumerate(self.classes)}
        self.files, self._ids = list(files), list(ids)
        self.targets = [index[label] for label in labels]
        self.report = report

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        return load_image_file(self.files[i]), self.targets[i]

    def item_ids(self) -> list[str]:
        return list(self._ids)


def inspect_image(data: bytes) -> tuple[str, str] | None:
    """None when `data` is an image that decodes fully; else (reason, detail)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()  # structure and checksums: catches a PNG cut after its pixel data
    except UnidentifiedImageError:
        return "not_an_image", "not an image format Pillow can read"
    except Image.DecompressionBombError as e:
        return "image_too_large", str(e)
    except Exception as e:  # Pillow raises OSError, SyntaxError, struct.error, ... for bad files
        return "truncated_or_corrupt", f"{type(e).__name__}: {e}"
    try:
        decode_image(data, max_bytes=MAX_FILE_BYTES, max_pixels=MAX_FILE_PIXELS)  # as training will
    except ImageTooLarge as e:
        return "image_too_large", str(e)
    except InvalidImage as e:
        return "truncated_or_corrupt", str(e)
    return None


def read_rows(csv_path: Path, path_column: str = "path",
              label_column: str = "label") -> list[tuple[int, str, str]]:
    """(line number, path, label) of each data row; the header must name both columns."""
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        if path_column not in header or label_column not in header:
            raise ValueError(f"{csv_path}: the header must name the columns {path_column!r} and "
                             f"{label_column!r}; it has {header}")
        return [(reader.line_num, (r.get(path_column) or "").strip(), (r.get(label_column) or "").strip())
                for r in reader]


def clean_rows(rows: Iterable[tuple[int, str, str]], root: Path, classes: Sequence[str] | None = None,
               csv_name: str = "") -> tuple[list[tuple[Path, str, str]], CleanReport]:
    """Keep the rows whose image is usable: [(file, path as written, label)] and the report."""
    rows = list(rows)
    report = CleanReport(csv=csv_name, rows=len(rows), kept=0)
    kept, first_seen = [], {}
    for line, path, label in tqdm(rows, desc="check images", unit="row", leave=False, mininterval=1):
        problem: tuple[str, str] | None = None
        file = Path(root) / path
        if not label:
            problem = ("missing_label", "")
        elif classes is not None and label not in classes:
            problem = ("unknown_label", f"not one of {list(classes)}")
        elif not path:
            problem = ("missing_path", "")
        elif not file.is_file():
            problem = ("missing_file", str(file))
        else:
            try:
                data = file.read_bytes()
                problem = inspect_image(data)
            except OSError as e:
                data, problem = b"", ("unreadable_file", str(e))
            if problem is None:
                digest = hashlib.sha256(data).hexdigest()
                if digest in first_seen:
                    problem = ("duplicate", "same bytes as line {} ({}, label {})".format(*first_seen[digest]))
                else:
                    first_seen[digest] = (line, path, label)
        if problem:
            report.dropped.append(Dropped(line, path, label, *problem))
        else:
            kept.append((file, path, label))
    report.kept = len(kept)
    return kept, report


def load_csv(csv_path: Path, root: Path | None = None, classes: Sequence[str] | None = None,
             report: Path | None = None, path_column: str = "path",
             label_column: str = "label") -> CsvImageDataset:
    """The cleaned dataset of a CSV (relative paths start at `root`, default the CSV's folder;
    `classes` fixes the label order and drops other labels). `report`: where to write the report."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DatasetNotFound(f"CSV file {csv_path} does not exist")
    kept, rep = clean_rows(read_rows(csv_path, path_column, label_column),
                           Path(root) if root else csv_path.parent, classes, str(csv_path))
    if report:
        rep.write(report)
    if not kept:
        raise ValueError(f"{rep.summary()}: no usable rows left")
    files, ids, labels = zip(*kept)
    return CsvImageDataset(files, ids, labels, classes, rep)
