"""The variant matrix: load and validate images/matrix.toml into typed dataclasses.

This is the only reader of the matrix. Everything else (bake plan, build args, tags, labels,
build-info.json, the CI job matrix) is derived from the `Matrix` returned by `load_matrix`.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MATRIX = REPO_ROOT / "images" / "matrix.toml"
# Every layer kind, bottom up. devel exists only for variants with a [variants.X.devel] table
# (Matrix.layers_of); the others always.
LAYERS = ("base", "torch", "data", "devel")
# What the images promise in their data layer (README, DESIGN): a matrix without one is refused.
PROMISED_DATA_STACK = ("torchdata", "zarr", "fsspec", "s3fs", "gcsfs", "nvidia-ml-py")
PLATFORMS = ("linux/amd64", "linux/arm64")

_VERSION = re.compile(r"^\d+(\.\d+)*([a-z0-9.+-]*)$")
_CUDA = re.compile(r"^\d+\.\d+$")
_REQUIRE_CUDA = re.compile(r"^cuda>=\d+\.\d+( .+)?$")
_DRIVER = re.compile(r"^\d{3}(\.\d+){0,2}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


class MatrixError(ValueError):
    """images/matrix.toml is malformed; the message names the key and the fix."""


class UnknownVariantError(MatrixError):
    """A variant that the matrix does not define was asked for."""


@dataclass(frozen=True)
class ImageSettings:
    name: str
    os_image: str
    python: str
    user: str
    uid: int
    series: str
    source: str
    licenses: str


@dataclass(frozen=True)
class TagTemplates:
    data: tuple[str, ...]
    torch: tuple[str, ...]
    base: tuple[str, ...]
    default: tuple[str, ...]
    devel: tuple[str, ...] = ()


@dataclass(frozen=True)
class Variant:
    name: str
    cuda: str
    index_url: str  # "" = pip's default index
    local_version: str  # "" or e.g. "cu118" for torch==2.6.0+cu118
    cudnn: str
    nccl: str
    cudart: str
    driver_min: str
    nvidia_require_cuda: str
    wheels: Mapping[str, str]
    platforms: tuple[str, ...] = ("linux/amd64",)
    # devel layer: the Debian packages of exactly this CUDA's compiler, the wheels it adds (locked
    # like every layer) and the TORCH_CUDA_ARCH_LIST used when no GPU is visible
    devel: Mapping[str, str] = field(default_factory=dict)  # wheel pins (empty: no devel layer)
    devel_debs: Mapping[str, str] = field(default_factory=dict)
    devel_arch_list: str = ""
    no_devel: str = ""  # why this variant has no devel image (when `devel` is empty)
    # platform -> {package: exact version}: torch-layer pins that differ there (e.g. CPU-only
    # torchvision on arm64, where no +cuXYZ build exists)
    platform_torch: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @property
    def driver_floor_major(self) -> int:
        return int(self.driver_min.split(".")[0])

    def wheel_requirements(self) -> list[str]:
        return [f"{pkg}=={ver}" for pkg, ver in self.wheels.items()]

    def devel_requirements(self) -> list[str]:
        return [f"{pkg}=={ver}" for pkg, ver in self.devel.items()]

    def devel_packages(self) -> list[str]:
        """Debian packages pinned exactly (apt's `name=version`)."""
        return [f"{pkg}={ver}" for pkg, ver in self.devel_debs.items()]


@dataclass(frozen=True)
class Unsupported:
    name: str
    reason: str
    advice: str


@dataclass(frozen=True)
class Matrix:
    path: Path
    schema: int
    default_variant: str
    image: ImageSettings
    tags: TagTemplates
    torch: Mapping[str, str]
    data_stack: Mapping[str, str]
    build_tools: Mapping[str, str]
    variants: Mapping[str, Variant]
    unsupported: Mapping[str, Unsupported] = field(default_factory=dict)

    # -- lookups ---------------------------------------------------------------------------
    def variant(self, name: str | None = None) -> Variant:
        """The named variant (the default when None); a clear error for anything else."""
        name = name or self.default_variant
        if name in self.variants:
            return self.variants[name]
        known = ", ".join(self.variants)
        if name in self.unsupported:
            u = self.unsupported[name]
            raise UnknownVariantError(
                f"variant '{name}' is not built: {u.reason} {u.advice} Variants that exist: {known}."
            )
        hint = difflib.get_close_matches(name, list(self.variants), n=1)
        did_you_mean = f" Did you mean '{hint[0]}'?" if hint else ""
        raise UnknownVariantError(
            f"unknown variant '{name}'.{did_you_mean} Variants that exist: {known} "
            f"(default {self.default_variant}); they are defined in {self.path.name}."
        )

    def torch_requirements(self, variant: Variant, platform: str | None = None) -> list[str]:
        """torch, torchvision, torchaudio pinned exactly, with the variant's local version; a
        platform's own pins (``platform_torch``) replace them there, exactly as written."""
        suffix = f"+{variant.local_version}" if variant.local_version else ""
        own = variant.platform_torch.get(platform or "", {})
        return [f"{pkg}=={own[pkg]}" if pkg in own else f"{pkg}=={ver}{suffix}" for pkg, ver in self.torch.items()]

    def data_requirements(self) -> list[str]:
        return [f"{pkg}=={ver}" for pkg, ver in self.data_stack.items()]

    def layers_of(self, variant: Variant) -> tuple[str, ...]:
        """The layers this variant is built in, bottom up."""
        return LAYERS if variant.devel else LAYERS[:3]

    def require_layer(self, variant: Variant, layer: str) -> None:
        if layer not in LAYERS:
            raise MatrixError(f"unknown layer '{layer}': choose one of {', '.join(LAYERS)}")
        if layer not in self.layers_of(variant):
            raise MatrixError(f"variant {variant.name} has no {layer} image: {variant.no_devel or 'no devel pins'}")

    def tags_for(self, variant: Variant, layer: str) -> list[str]:
        """Tags (without registry) of one variant's layer image."""
        self.require_layer(variant, layer)
        templates = list(getattr(self.tags, layer))
        if layer == "data" and variant.name == self.default_variant:
            templates += list(self.tags.default)
        return [t.format(series=self.image.series, variant=variant.name) for t in templates]

    def image_refs(self, variant: Variant, layer: str, registry: str = "") -> list[str]:
        prefix = f"{registry.rstrip('/')}/" if registry else ""
        return [f"{prefix}{self.image.name}:{tag}" for tag in self.tags_for(variant, layer)]

    def build_info(self, variant: Variant, layer: str) -> dict[str, Any]:
        """What the image records about itself (/opt/pytorch-cuda/build-info.json) for `layer`.

        Only what that layer contains, so a data-stack change leaves base/torch caches intact.
        """
        info: dict[str, Any] = {
            "image": self.image.name,
            "variant": variant.name,
            "layer": layer,
            "series": self.image.series,
            "python": self.image.python,
            "cuda": variant.cuda,
            "cudnn": variant.cudnn,
            "nccl": variant.nccl,
            "cudart": variant.cudart,
            "driver_min": variant.driver_min,
            "nvidia_require_cuda": variant.nvidia_require_cuda,
            "wheels": dict(variant.wheels),
        }
        if layer in ("torch", "data", "devel"):
            info.update({pkg: ver for pkg, ver in self.torch.items()})
        if layer in ("data", "devel"):
            info["data_stack"] = dict(self.data_stack)
        if layer == "devel":
            info["devel"] = dict(variant.devel)
            info["devel_debs"] = dict(variant.devel_debs)
            info["devel_arch_list"] = variant.devel_arch_list
        return info

    def to_json(self) -> dict[str, Any]:
        """The whole matrix as plain JSON data (imagectl variants --json)."""
        from dataclasses import asdict

        return {
            "schema": self.schema,
            "default_variant": self.default_variant,
            "image": asdict(self.image),
            "tags": {k: list(v) for k, v in asdict(self.tags).items()},
            "torch": dict(self.torch),
            "data_stack": dict(self.data_stack),
            "build_tools": dict(self.build_tools),
            "variants": {
                name: {**asdict(v), "wheels": dict(v.wheels), "platforms": list(v.platforms),
                       "devel": dict(v.devel), "layers": list(self.layers_of(v)),
                       "tags": {layer: self.tags_for(v, layer) for layer in self.layers_of(v)}}
                for name, v in self.variants.items()
            },
            "unsupported": {name: asdict(u) for name, u in self.unsupported.items()},
        }


# -- loading and validation ----------------------------------------------------------------

_TOP_KEYS = {"schema", "default_variant", "image", "tags", "torch", "data_stack", "build_tools", "variants",
             "unsupported"}
_IMAGE_KEYS = {"name", "os_image", "python", "user", "uid", "series", "source", "licenses"}
_TAG_KEYS = {"data", "torch", "base", "default", "devel"}
_TORCH_KEYS = {"torch", "torchvision", "torchaudio"}
_VARIANT_KEYS = {"cuda", "index_url", "local_version", "cudnn", "nccl", "cudart", "driver_min",
                 "nvidia_require_cuda", "wheels", "platforms", "devel", "no_devel", "platform_torch"}
_VARIANT_OPTIONAL = {"platforms", "devel", "no_devel", "platform_torch"}
_DEVEL_KEYS = {"debian", "wheels", "arch_list"}
_DEB_VERSION = re.compile(r"^[0-9][A-Za-z0-9.+~:-]*$")
_ARCH_LIST = re.compile(r"^\d+\.\d+(\+PTX)?(;\d+\.\d+(\+PTX)?)*$")
_UNSUPPORTED_KEYS = {"reason", "advice"}


def _check_keys(where: str, table: Any, allowed: set[str], required: set[str] | None = None) -> None:
    if not isinstance(table, dict):
        raise MatrixError(f"{where}: expected a table, got {type(table).__name__}")
    for key in table:
        if key not in allowed:
            hint = difflib.get_close_matches(key, sorted(allowed), n=1)
            did_you_mean = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise MatrixError(
                f"{where}: unknown key '{key}'{did_you_mean}; allowed keys: {', '.join(sorted(allowed))}"
            )
    missing = sorted((allowed if required is None else required) - set(table))
    if missing:
        raise MatrixError(f"{where}: missing required key(s): {', '.join(missing)}")


def _str(where: str, value: Any, pattern: re.Pattern[str] | None = None, what: str = "") -> str:
    if not isinstance(value, str):
        raise MatrixError(f"{where}: expected a string, got {value!r}")
    if pattern is not None and not pattern.match(value):
        raise MatrixError(f"{where}: {value!r} is not a valid {what or 'value'}")
    return value


def _pins(where: str, table: Any) -> dict[str, str]:
    if not isinstance(table, dict) or not table:
        raise MatrixError(f"{where}: expected a non-empty table of package = \"version\" pins")
    pins: dict[str, str] = {}
    for pkg, ver in table.items():
        if not _NAME.match(pkg):
            raise MatrixError(f"{where}: '{pkg}' is not a valid package name")
        v = _str(f"{where}.{pkg}", ver, _VERSION, "exact version (pins are exact: no ranges)")
        pins[pkg] = v
    return pins


def _platforms(where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(p, str) for p in value):
        raise MatrixError(f"{where}.platforms: expected a non-empty list such as [\"linux/amd64\"]")
    for p in value:
        if p not in PLATFORMS:
            raise MatrixError(f"{where}.platforms: {p!r} is not supported; choose from {', '.join(PLATFORMS)}")
    if len(set(value)) != len(value):
        raise MatrixError(f"{where}.platforms: {value} lists a platform twice")
    return tuple(value)


def _devel(where: str, raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    _check_keys(where, raw, _DEVEL_KEYS)
    debs = raw["debian"]
    if not isinstance(debs, dict) or not debs:
        raise MatrixError(f"{where}.debian: expected {{ package = \"exact Debian version\" }}")
    for pkg, ver in debs.items():
        _str(f"{where}.debian.{pkg}", ver, _DEB_VERSION, "exact Debian version")
    return {"devel": _pins(f"{where}.wheels", raw["wheels"]), "devel_debs": dict(debs),
            "devel_arch_list": _str(f"{where}.arch_list", raw["arch_list"], _ARCH_LIST,
                                    "TORCH_CUDA_ARCH_LIST (e.g. 8.0;9.0+PTX)")}


def _platform_torch(where: str, raw: Any) -> dict[str, dict[str, str]]:
    if not isinstance(raw, dict):
        raise MatrixError(f"{where}.platform_torch: expected tables such as [{where}.platform_torch.\"linux/arm64\"]")
    out = {}
    for platform, pins in raw.items():
        table = _pins(f"{where}.platform_torch.{platform}", pins)
        bad = sorted(set(table) - _TORCH_KEYS)
        if bad:
            raise MatrixError(f"{where}.platform_torch.{platform}: {bad} are not torch-layer packages "
                              f"({', '.join(sorted(_TORCH_KEYS))})")
        out[platform] = table
    return out


def _variant(name: str, raw: Any) -> Variant:
    where = f"variants.{name}"
    _check_keys(where, raw, _VARIANT_KEYS, required=_VARIANT_KEYS - _VARIANT_OPTIONAL)
    if not _NAME.match(name):
        raise MatrixError(f"{where}: '{name}' is not a valid variant name (lowercase, digits, . _ -)")
    wheels = _pins(f"{where}.wheels", raw["wheels"])
    v = Variant(
        name=name,
        cuda=_str(f"{where}.cuda", raw["cuda"], _CUDA, "CUDA major.minor version"),
        index_url=_str(f"{where}.index_url", raw["index_url"]),
        local_version=_str(f"{where}.local_version", raw["local_version"]),
        cudnn=_str(f"{where}.cudnn", raw["cudnn"], _VERSION, "version"),
        nccl=_str(f"{where}.nccl", raw["nccl"], _VERSION, "version"),
        cudart=_str(f"{where}.cudart", raw["cudart"], _VERSION, "version"),
        driver_min=_str(f"{where}.driver_min", raw["driver_min"], _DRIVER, "driver version (e.g. 525.60.13)"),
        nvidia_require_cuda=_str(f"{where}.nvidia_require_cuda", raw["nvidia_require_cuda"], _REQUIRE_CUDA,
                                 "NVIDIA_REQUIRE_CUDA value (e.g. 'cuda>=12.0')"),
        wheels=wheels,
        platforms=_platforms(where, raw.get("platforms", ["linux/amd64"])),
        **_devel(f"{where}.devel", raw.get("devel")),
        no_devel=_str(f"{where}.no_devel", raw.get("no_devel", "")),
        platform_torch=_platform_torch(where, raw.get("platform_torch", {})),
    )
    for p in v.platform_torch:
        if p not in v.platforms:
            raise MatrixError(f"{where}.platform_torch: {p!r} is not one of the variant's platforms {list(v.platforms)}")
    if v.devel and v.no_devel:
        raise MatrixError(f"{where}: has both a devel table and no_devel; keep one")
    if not v.devel and not v.no_devel:
        raise MatrixError(f"{where}: no devel table: say why in no_devel = \"...\" (users see it)")
    if v.index_url and not v.index_url.startswith("https://"):
        raise MatrixError(f"{where}.index_url: {v.index_url!r} must be an https:// URL or empty")
    # The headline pins must be the ones the runtime wheels actually install.
    major = v.cuda.split(".")[0]
    expect = {f"nvidia-cudnn-cu{major}": v.cudnn, f"nvidia-nccl-cu{major}": v.nccl,
              f"nvidia-cuda-runtime-cu{major}": v.cudart}
    for pkg, ver in expect.items():
        if wheels.get(pkg) != ver:
            raise MatrixError(
                f"{where}.wheels: {pkg} must be pinned to {ver} to match the variant's "
                f"{pkg.split('-')[1]} pin (found {wheels.get(pkg)!r})"
            )
    if not v.cudart.startswith(v.cuda + "."):
        raise MatrixError(f"{where}: cudart {v.cudart} does not belong to CUDA {v.cuda}")
    return v


def parse_matrix(raw: dict[str, Any], path: Path = DEFAULT_MATRIX) -> Matrix:
    _check_keys("matrix", raw, _TOP_KEYS, required=_TOP_KEYS - {"unsupported"})
    if raw["schema"] != 1:
        raise MatrixError(f"schema: version {raw['schema']!r} is not supported by this imagectl (expected 1)")
    _check_keys("image", raw["image"], _IMAGE_KEYS)
    img = raw["image"]
    if not isinstance(img["uid"], int) or img["uid"] <= 0:
        raise MatrixError("image.uid: expected a positive integer (the default user must not be root)")
    image = ImageSettings(
        name=_str("image.name", img["name"], _NAME, "image name"),
        os_image=_str("image.os_image", img["os_image"]),
        python=_str("image.python", img["python"], re.compile(r"^3\.\d+$"), "Python major.minor"),
        user=_str("image.user", img["user"], _NAME, "user name"),
        uid=img["uid"],
        series=_str("image.series", img["series"]),
        source=_str("image.source", img["source"]),
        licenses=_str("image.licenses", img["licenses"]),
    )
    if image.user == "root":
        raise MatrixError("image.user: 'root' is refused: the images run as a non-root user by default "
                          "(use e.g. \"ml\"; derived images may switch to root where they need to)")
    if tuple(int(x) for x in image.python.split(".")) < (3, 12):
        raise MatrixError(f"image.python: {image.python} is too old; images need >= 3.12 (zarr >= 3.2)")
    _check_keys("tags", raw["tags"], _TAG_KEYS, required=_TAG_KEYS - {"devel"})
    tag_lists: dict[str, tuple[str, ...]] = {}
    for key in sorted(_TAG_KEYS):
        value = raw["tags"].get(key, [])
        if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
            raise MatrixError(f"tags.{key}: expected a list of tag templates")
        tag_lists[key] = tuple(value)
    tags = TagTemplates(**tag_lists)
    _check_keys("torch", raw["torch"], _TORCH_KEYS)
    torch = _pins("torch", raw["torch"])
    data_stack = _pins("data_stack", raw["data_stack"])
    missing = [p for p in PROMISED_DATA_STACK if p not in data_stack]
    if missing:
        raise MatrixError(f"data_stack: missing {', '.join(missing)}: the data images promise "
                          f"{', '.join(PROMISED_DATA_STACK)}; pin them here")
    build_tools = _pins("build_tools", raw["build_tools"])
    if "uv" not in build_tools:
        raise MatrixError("build_tools: missing the uv pin (the Dockerfile installs packages with uv)")
    if not isinstance(raw["variants"], dict) or not raw["variants"]:
        raise MatrixError("variants: expected at least one [variants.NAME] table")
    variants = {name: _variant(name, v) for name, v in raw["variants"].items()}
    unsupported = {}
    for name, u in (raw.get("unsupported") or {}).items():
        _check_keys(f"unsupported.{name}", u, _UNSUPPORTED_KEYS)
        if name in variants:
            raise MatrixError(f"unsupported.{name}: '{name}' is also a built variant; remove one of them")
        unsupported[name] = Unsupported(name, _str(f"unsupported.{name}.reason", u["reason"]),
                                        _str(f"unsupported.{name}.advice", u["advice"]))
    default = _str("default_variant", raw["default_variant"])
    if default not in variants:
        raise MatrixError(f"default_variant: '{default}' is not one of the variants ({', '.join(variants)})")
    matrix = Matrix(path=path, schema=1, default_variant=default, image=image, tags=tags, torch=torch,
                    data_stack=data_stack, build_tools=build_tools, variants=variants, unsupported=unsupported)
    _check_tags(matrix)
    return matrix


def _check_tags(matrix: Matrix) -> None:
    seen: dict[str, str] = {}
    for v in matrix.variants.values():
        for layer in matrix.layers_of(v):
            try:
                tags = matrix.tags_for(v, layer)
            except (KeyError, IndexError, ValueError) as exc:
                raise MatrixError(f"tags.{layer}: bad template ({exc}); use {{series}} and {{variant}}") from exc
            for tag in tags:
                if not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", tag):
                    raise MatrixError(f"tags.{layer}: '{tag}' is not a valid Docker tag")
                owner = f"{v.name}/{layer}"
                if tag in seen and seen[tag] != owner:
                    raise MatrixError(
                        f"tags: duplicate tag '{tag}' for {seen[tag]} and {owner}; "
                        "every variant/layer needs its own tags (include {variant} in the template)"
                    )
                seen[tag] = owner


def load_matrix(path: str | Path | None = None) -> Matrix:
    """Read and validate the matrix; MatrixError with the file name and the cause on any problem."""
    path = Path(path) if path else DEFAULT_MATRIX
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MatrixError(f"{path}: no such file (the variant matrix lives in images/matrix.toml)") from None
    except IsADirectoryError:
        raise MatrixError(f"{path} is a folder: pass the matrix file itself, e.g. {path / 'matrix.toml'}") from None
    except PermissionError:
        raise MatrixError(f"{path}: permission denied: make it readable, or pass another file") from None
    except UnicodeDecodeError:
        raise MatrixError(f"{path} is not a text file (not UTF-8): pass the TOML matrix, e.g. images/matrix.toml") from None
    except tomllib.TOMLDecodeError as exc:
        raise MatrixError(f"{path}: not valid TOML: {exc}") from None
    try:
        return parse_matrix(raw, path)
    except MatrixError as exc:
        raise MatrixError(f"{path.name}: {exc}") from None
