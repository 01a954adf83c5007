"""CF decoding on request (``decode="cf"``): what ``xarray.open_zarr`` does to stored values, done
vectorised over whole batches.

* ``_FillValue`` / ``missing_value`` -> NaN (integers are widened to float first, as xarray does);
* ``scale_factor`` / ``add_offset`` applied; packed integers widened to float32 or float64 by
  xarray's own rule (``_choose_float_dtype``: both attributes of one float type -> that type, except
  32-bit integers -> float64; an offset of another type -> float64; a scale factor alone -> its type);
* ``_Unsigned`` (netCDF-3 style unsigned data in signed storage) reinterpreted;
* time coordinates (``units: "hours since 1970-01-01"``) kept numeric with their units and calendar
  (:class:`TimeUnits`), or decoded to ``datetime64[ns]`` when asked (``times="datetime64"``) for the
  standard, gregorian and proleptic_gregorian calendars. Other calendars (noleap, 360_day, julian...)
  have dates numpy cannot represent: asking for datetime64 there is a clear error, numeric stays.
* Durations (``units: "hours"`` without ``since``) stay numeric.

Every step is the same numpy operation, on the same types, as xarray's coders, so results are
bit-identical to ``xarray.open_zarr(...)`` of the same stored values. The zarr fill value counts as
``_FillValue`` for zarr v2 stores and not for v3, as in xarray; v3 ``_FillValue`` attributes may be
base64-encoded doubles (xarray's encoding) or plain numbers.

Cost: :meth:`CFDecoder.decode` works through the batch in cache-sized blocks, one pass over memory;
:func:`cf_cost` measures it against a plain copy of the same batch.
"""

from __future__ import annotations

import base64
import math
import re
import struct
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .errors import ZarrLoaderError

Times = Literal["numeric", "datetime64"]
STANDARD_CALENDARS = frozenset({"standard", "gregorian", "proleptic_gregorian"})
ENCODING_ATTRS = ("_FillValue", "missing_value", "scale_factor", "add_offset", "_Unsigned")
_NP_UNITS = {"nanoseconds": "ns", "microseconds": "us", "milliseconds": "ms", "seconds": "s",
             "minutes": "m", "hours": "h", "days": "D"}
_NS_PER = {"ns": 1, "us": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9, "D": 86400 * 10**9}
_BLOCK = 1 << 16  # elements per block: a few hundred KiB, so every step of a block stays in cache
_NAT = np.iinfo(np.int64).min


class CFDecodeError(ZarrLoaderError, ValueError):
    """Stored values cannot be decoded the way they were asked for (cause and fix in the message)."""


# -- time units ------------------------------------------------------------------------------------
_REF_RE = re.compile(
    r"^(?P<y>[+-]?\d{1,6})-(?P<mo>\d{1,2})(?:-(?P<d>\d{1,2}))?"
    r"(?:[ T]+(?P<h>\d{1,2})(?::(?P<mi>\d{1,2})(?::(?P<s>\d{1,2}(?:\.\d*)?))?)?)?"
    r"\s*(?P<tz>Z|UTC|GMT|[+-]\d{1,2}(?::?\d{2})?)?\s*$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class TimeUnits:
    """CF time encoding of a coordinate: ``"<unit> since <reference date>"`` and a calendar."""

    units: str  # as stored, e.g. "hours since 1970-01-01 00:00:00"
    unit: str  # numpy unit code: "D", "h", "m", "s", "ms", "us", "ns"; "" when not one of those
    reference: str  # the reference date as stored
    calendar: str  # lower-case; "standard" when the attribute is missing

    @classmethod
    def parse(cls, units: Any, calendar: Any = None) -> TimeUnits | None:
        """TimeUnits of a ``units`` attribute, or None when it is not ``"X since DATE"``."""
        if units is None:
            return None
        text = _text(units)
        m = re.match(r"(.+) since (.+)", text)
        if not m:
            return None
        delta, ref = (s.strip() for s in m.groups())
        key = delta.lower()
        if not key.endswith("s"):
            key += "s"
        cal = _text(calendar).lower() if calendar is not None else "standard"
        return cls(units=text, unit=_NP_UNITS.get(key, ""), reference=ref, calendar=cal)

    @property
    def datetime64_possible(self) -> bool:
        """True when the calendar and unit have an exact datetime64 equivalent."""
        return self.calendar in STANDARD_CALENDARS and bool(self.unit)

    def reference_ns(self) -> int:
        """The reference date in nanoseconds since 1970-01-01 (UTC, time zone offsets applied), as a
        Python int: references long before 1677 (``days since 0001-01-01``) do not fit datetime64[ns].
        In the standard/gregorian calendar a reference before 1582-10-15 is a Julian date."""
        m = _REF_RE.match(self.reference)
        if not m:
            raise CFDecodeError(
                f"cannot read the reference date of time units {self.units!r}. Fix: decode times as numbers "
                "(times='numeric', the default) or correct the units attribute (e.g. 'hours since 1970-01-01')"
            )
        g = m.groupdict()
        y, mo, d = int(g["y"]), int(g["mo"]), int(g["d"] or 1)
        h, mi, sec = int(g["h"] or 0), int(g["mi"] or 0), float(g["s"] or 0)
        if not (1 <= mo <= 12 and 1 <= d <= 31 and h < 24 and mi < 60 and sec < 61):
            raise CFDecodeError(f"reference date of time units {self.units!r} is not a valid date")
        julian = self.calendar in ("standard", "gregorian") and (y, mo, d) < (1582, 10, 15)
        days = _days_from_julian(y, mo, d) if julian else _days_from_civil(y, mo, d)
        whole = int(sec)
        ns = ((days * 24 + h) * 60 + mi) * 60 * 10**9 + whole * 10**9 + round((sec - whole) * 1e9)
        tz = (g["tz"] or "").upper()
        if tz and tz not in ("Z", "UTC", "GMT"):
            sign = -1 if tz.startswith("-") else 1
            digits = tz[1:].replace(":", "")
            hours, minutes = (int(digits), 0) if len(digits) <= 2 else (int(digits[:-2]), int(digits[-2:]))
            ns -= sign * (hours * 60 + minutes) * 60 * 10**9
        return ns

    def to_datetime64(self, values: np.ndarray) -> np.ndarray:
        """Numbers in these units -> ``datetime64[ns]`` as xarray decodes them: integers exactly,
        floats scaled to nanoseconds in float64 and truncated; NaN and the int64 minimum -> NaT."""
        self._check_decodable()
        ref = self.reference_ns()
        x = np.asarray(values)
        if x.dtype.kind == "i":
            x = x.astype(np.int64)
        elif x.dtype.kind == "u":
            x = x.astype(np.uint64)
        elif x.dtype.kind == "f":
            x = x.astype(np.float64)
        else:
            raise CFDecodeError(f"time values of dtype {x.dtype} cannot be decoded with units {self.units!r}")
        per = _NS_PER[self.unit]
        if x.dtype.kind == "f":
            nan = np.isnan(x)
        elif x.dtype.kind == "i":
            nan = x == _NAT
        else:
            nan = np.zeros(x.shape, bool)
        valid = x[~nan]
        if valid.size:
            lo, hi = float(valid.min()) * per + ref, float(valid.max()) * per + ref
            if lo < -(2**63) + 1 or hi > 2**63 - 1:
                raise CFDecodeError(
                    f"times with units {self.units!r} (calendar {self.calendar!r}) run outside what "
                    "datetime64[ns] holds (1677-09-21 to 2262-04-11). Fix: decode times as numbers "
                    "(times='numeric', the default)"
                )
        # shift by a whole number of units v0 so that no intermediate overflows int64 when the
        # reference lies far from 1970: total = (v - v0) * per + (v0 * per + ref), exact for integers
        v0 = 0 if -(2**62) < ref < 2**62 else round(-ref / per)
        rest = v0 * per + ref
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            if x.dtype.kind == "f":
                ns = ((x - v0) * np.int64(per) if v0 else x * np.int64(per)).astype(np.int64)
            else:
                ns = (np.where(nan, 0, x).astype(np.int64) - np.int64(v0)) * np.int64(per)
            ns += np.int64(rest)
        if nan.any():
            ns[nan] = _NAT
        return ns.view("datetime64[ns]")

    def _check_decodable(self) -> None:
        if self.calendar not in STANDARD_CALENDARS:
            raise CFDecodeError(
                f"calendar {self.calendar!r} (time units {self.units!r}) has dates numpy's datetime64 cannot "
                "represent. Fix: decode times as numbers (times='numeric', the default: values stay numbers, "
                "with units and calendar in the metadata), or convert them with cftime.num2date"
            )
        if not self.unit:
            raise CFDecodeError(
                f"time units {self.units!r} have no fixed length in datetime64 (use days, hours, minutes, "
                "seconds, milliseconds, microseconds or nanoseconds). Fix: decode times as numbers "
                "(times='numeric', the default)"
            )

def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _days_from_julian(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 (proleptic Gregorian) of a Julian-calendar date, via its Julian day number."""
    a = (14 - m) // 12
    yy, mm = y + 4800 - a, m + 12 * a - 3
    jdn = d + (153 * mm + 2) // 5 + 365 * yy + yy // 4 - 32083
    return jdn - 2440588


def time_units(attrs: Mapping[str, Any]) -> TimeUnits | None:
    """The CF time encoding in ``attrs`` (``units``, ``calendar``), or None for non-time arrays."""
    return TimeUnits.parse(attrs.get("units"), attrs.get("calendar"))


def decode_times(values: np.ndarray, units: str, calendar: str | None = None) -> np.ndarray:
    """``values`` in ``units`` (``"days since 2000-01-01"``) -> ``datetime64[ns]`` (see TimeUnits)."""
    tu = TimeUnits.parse(units, calendar)
    if tu is None:
        raise CFDecodeError(f"{units!r} are not CF time units ('<unit> since <date>')")
    return tu.to_datetime64(values)


# -- value decoding ------------------------------------------------------------------------------
def _text(value: Any) -> str:
    if isinstance(value, bytes | np.bytes_):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.size == 1:
        return _text(value.reshape(()).item())
    return str(value)


def _zarr_v3_fill(value: Any, dtype: np.dtype) -> Any:
    """A v3 ``_FillValue`` attribute as xarray reads it: base64 little-endian doubles for floats."""
    if dtype.kind == "f" and isinstance(value, str | bytes):
        try:
            return struct.unpack("<d", base64.standard_b64decode(value))[0]
        except (ValueError, struct.error) as exc:
            raise CFDecodeError(
                f"_FillValue {value!r} is neither a number nor a base64-encoded double (xarray's encoding). "
                "Fix: rewrite the attribute, or decode without CF (decode=None)"
            ) from exc
    if dtype.kind in "iu" and isinstance(value, int | float | np.integer | np.floating):
        return int(value)
    if dtype.kind == "b":
        return bool(value)
    return value


def _float_dtype(dtype: np.dtype, attrs: Mapping[str, Any]) -> np.dtype:
    """xarray's ``_choose_float_dtype``, rule for rule."""
    scale = attrs.get("scale_factor")
    offset = attrs.get("add_offset")
    if scale is not None or offset is not None:
        scale_type = _value_dtype(scale) if scale is not None else None
        offset_type = _value_dtype(offset) if offset is not None else None
        if (offset is not None and scale is not None and offset_type == scale_type
                and scale_type in (np.dtype(np.float32), np.dtype(np.float64))):
            if dtype.itemsize == 4 and np.issubdtype(dtype, np.integer):
                return np.dtype(np.float64)
            return scale_type  # type: ignore[return-value]
        if offset is not None:
            return np.dtype(np.float64)
        return scale_type  # type: ignore[return-value]
    if dtype.itemsize <= 4 and np.issubdtype(dtype, np.floating):
        return np.dtype(np.float32)
    if dtype.itemsize <= 2 and np.issubdtype(dtype, np.integer):
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def _value_dtype(value: Any) -> np.dtype:
    # xarray takes np.dtype(type(value)): a Python float is float64, a numpy scalar its own type
    return value.dtype if isinstance(value, np.ndarray | np.generic) else np.dtype(type(value))


def _promote(dtype: np.dtype) -> np.dtype:
    """xarray's ``maybe_promote`` for masking: floats stay, small ints -> float32, others -> float64."""
    if dtype.kind == "f":
        return dtype
    if dtype.kind in "iu":
        return np.dtype(np.float32 if dtype.itemsize <= 2 else np.float64)
    return np.dtype(object)


def _scalar(value: Any) -> Any:
    return np.asarray(value).item() if np.ndim(value) > 0 else value


@dataclass(frozen=True)
class CFDecoder:
    """Decodes stored values of one array to what xarray shows. Build it with :meth:`from_attrs`.

    ``out_dtype``: dtype of decoded values. ``decode(x)`` takes a batch of stored values (any shape)
    and returns decoded values; in place when the dtype does not change and ``x`` is writable.
    """

    stored_dtype: np.dtype
    out_dtype: np.dtype
    view_dtype: np.dtype | None = None  # _Unsigned reinterpretation of the stored bits
    mask_dtype: np.dtype | None = None  # cast before comparing with fill values (xarray's _apply_mask)
    fill_values: tuple[Any, ...] = ()
    decoded_fill: Any = None
    scale_dtype: np.dtype | None = None  # cast before scale_factor / add_offset
    scale_factor: Any = None
    add_offset: Any = None
    time: TimeUnits | None = None
    times: Times = "numeric"
    as_bool: bool = False
    attrs: Mapping[str, Any] = field(default_factory=dict)  # the attributes left after decoding

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any], stored_dtype: Any, zarr_fill_value: Any = None, *,
                   zarr_format: int = 3, times: Times = "numeric",
                   mask_zarr_fill_value: bool | None = None) -> CFDecoder:
        """The decoder for an array with attributes ``attrs`` stored as ``stored_dtype``.

        ``zarr_fill_value`` is the array's zarr ``fill_value``: like xarray, it masks values for zarr
        v2 (where xarray stores ``_FillValue`` there) and not for v3 (``mask_zarr_fill_value``
        overrides). ``times="datetime64"`` decodes CF time coordinates to ``datetime64[ns]``.
        """
        if times not in ("numeric", "datetime64"):
            raise ValueError(f"times={times!r}: choose 'numeric' or 'datetime64'")
        dtype = np.dtype(stored_dtype)
        attrs = dict(attrs)
        work = dtype.newbyteorder("=") if not dtype.isnative else dtype
        if mask_zarr_fill_value is None:
            mask_zarr_fill_value = zarr_format == 2
        if mask_zarr_fill_value:
            if zarr_fill_value is not None:
                attrs["_FillValue"] = zarr_fill_value
        elif attrs.get("_FillValue") is not None:
            attrs["_FillValue"] = _zarr_v3_fill(attrs["_FillValue"], dtype)
        as_bool = attrs.get("dtype") == "bool"
        if as_bool:
            attrs.pop("dtype")
        tu = time_units(attrs)
        decode_time = tu is not None and times == "datetime64"
        if decode_time:
            assert tu is not None
            tu._check_decodable()  # fail when the decoder is built, not mid-epoch

        # CFMaskCoder: raw fill values, NaN ones dropped (integers) or unused (floats)
        raw: dict[str, Any] = {}
        fills: list[Any] = []
        for key in ("missing_value", "_FillValue"):
            v = attrs.get(key)
            if v is None:
                continue
            raw[key] = v
            kfill = [fv for fv in np.ravel(v) if not _isnull(fv)]
            if not kfill and np.issubdtype(work, np.integer):
                warnings.warn(f"non-conforming {key}={v!r} on an integer array is ignored (as xarray does)",
                              stacklevel=2)
                del raw[key]
                continue
            fills += [f for f in kfill if not any(_same(f, g) for g in fills)]
        view = None
        unsigned = attrs.get("_Unsigned")
        if unsigned is not None:
            flag = _text(unsigned).lower()
            if work.kind == "i" and flag == "true":
                view = np.dtype(f"u{work.itemsize}")
                raw_fill = raw.get("_FillValue")
                if raw_fill is not None:
                    new = np.array(raw_fill, dtype=work).view(view).item()
                    fills = [f for f in fills if not _same(f, raw_fill)] + [new]
            elif work.kind == "u" and flag == "false":
                view = np.dtype(f"i{work.itemsize}")
                raw_fill = raw.get("_FillValue")
                if raw_fill is not None:
                    try:
                        new_fill = view.type(raw_fill)
                    except OverflowError as exc:
                        raise CFDecodeError(
                            f"_FillValue {raw_fill!r} does not fit the signed type {view} that _Unsigned='false' "
                            "asks for. Fix: store the fill value as a signed number, or decode without CF"
                        ) from exc
                    fills = [f for f in fills if not _same(f, raw_fill)] + [new_fill]
            elif work.kind not in "iu":
                warnings.warn(f"_Unsigned on a {work} array is ignored (as xarray does)", stacklevel=2)
        cur = view or work
        packed = attrs.get("scale_factor") is not None or attrs.get("add_offset") is not None
        mask_dtype = decoded_fill = None
        if fills:
            if packed:
                mask_dtype, decoded_fill = _float_dtype(cur, attrs), np.nan
            elif decode_time and cur.kind in "iu":
                mask_dtype, decoded_fill = np.dtype(np.int64), _NAT
            else:
                mask_dtype, decoded_fill = _promote(cur), np.nan
                if mask_dtype.kind == "O":
                    raise CFDecodeError(
                        f"fill values {fills} on a {cur} array cannot be masked (xarray would give objects). "
                        "Fix: decode without CF (decode=None)"
                    )
            cur = mask_dtype
        # CFScaleOffsetCoder
        scale_dtype = sf = ao = None
        if packed:
            sf = _scalar(attrs["scale_factor"]) if attrs.get("scale_factor") is not None else None
            ao = _scalar(attrs["add_offset"]) if attrs.get("add_offset") is not None else None
            scale_dtype = cur
            if not raw or decode_time:
                scale_dtype = _float_dtype(cur, attrs)
            cur = scale_dtype
        out = np.dtype("datetime64[ns]") if decode_time else (np.dtype(bool) if as_bool else cur)
        left = {k: v for k, v in attrs.items() if k not in ENCODING_ATTRS}
        if decode_time:
            left.pop("units", None)
            left.pop("calendar", None)
        return cls(stored_dtype=dtype, out_dtype=out, view_dtype=view, mask_dtype=mask_dtype,
                   fill_values=tuple(fills), decoded_fill=decoded_fill, scale_dtype=scale_dtype,
                   scale_factor=sf, add_offset=ao, time=tu, times=times, as_bool=as_bool, attrs=left)

    @property
    def is_identity(self) -> bool:
        """True when decoding changes nothing (no fill, no packing, native dtype, no time decoding)."""
        return (self.out_dtype == self.stored_dtype and self.view_dtype is None and self.mask_dtype is None
                and self.scale_dtype is None and not (self.time and self.times == "datetime64"))

    @property
    def decodes_time(self) -> bool:
        return self.time is not None and self.times == "datetime64"

    @property
    def numeric_dtype(self) -> np.dtype:
        """dtype of the numbers after masking and scaling (before any time decoding)."""
        return self.scale_dtype or self.mask_dtype or self.view_dtype or self.stored_dtype.newbyteorder("=")

    def decode(self, data: np.ndarray, *, out: np.ndarray | None = None, copy: bool = False) -> np.ndarray:
        """Decoded values of ``data`` (stored values, any shape): one vectorised pass per batch.

        ``out``: write into this array (shape of ``data``, dtype ``out_dtype``). Without it, ``data``
        itself is decoded in place when the dtype does not change and it is writable (pass
        ``copy=True`` to keep it), else a new array is returned."""
        x = np.asarray(data)
        native = self.stored_dtype.newbyteorder("=")
        if x.dtype not in (self.stored_dtype, native):
            raise CFDecodeError(f"decoder built for stored dtype {self.stored_dtype} got {x.dtype}")
        if out is not None and (out.shape != x.shape or out.dtype != self.out_dtype):
            raise ValueError(f"out must have shape {x.shape} and dtype {self.out_dtype}, not {out.shape} {out.dtype}")
        if not x.dtype.isnative:
            x = x.astype(native)  # a copy of our own: may be worked on in place below
            copy = False
        if self.view_dtype is not None:
            x = x.view(self.view_dtype)
        if self.as_bool:
            return _into(x.astype(bool), out)
        if self.decodes_time:
            assert self.time is not None
            return _into(self.time.to_datetime64(self._numeric(x, None)), out)
        if self.mask_dtype is None and self.scale_dtype is None:
            if out is not None:
                np.copyto(out, x)
                return out
            return x.copy() if copy else x
        if out is not None:
            target = out
        elif not copy and x.dtype == self.numeric_dtype and x.flags.writeable:
            target = x
        else:
            target = np.empty(x.shape, self.numeric_dtype)
        return self._numeric(x, target)

    def _numeric(self, x: np.ndarray, target: np.ndarray | None) -> np.ndarray:
        """Mask and scale ``x`` into ``target``, block by block when both are contiguous (each block
        goes through every step while it is in cache; the steps are elementwise, so the result is
        the same as xarray's whole-array passes)."""
        if target is None:
            target = np.empty(x.shape, self.numeric_dtype)
        same = target is x
        if x.flags.c_contiguous and target.flags.c_contiguous and x.size > _BLOCK:
            src, dst = x.reshape(-1), target.reshape(-1)
            for i in range(0, src.size, _BLOCK):
                self._steps(src[i : i + _BLOCK], dst[i : i + _BLOCK], same)
        else:
            self._steps(x, target, same)
        return target

    def _steps(self, x: np.ndarray, dst: np.ndarray, same: bool) -> None:
        """xarray's CFMaskCoder then CFScaleOffsetCoder, with the same casts and scalar types."""
        y = x
        if self.mask_dtype is not None:
            if dst.dtype == self.mask_dtype:
                if not same:
                    np.copyto(dst, x, casting="unsafe")
                y = dst
            else:
                y = x.astype(self.mask_dtype)
            cond = y == self.fill_values[0]
            for fv in self.fill_values[1:]:
                cond |= y == fv
            np.copyto(y, self.decoded_fill, where=cond, casting="unsafe")
        if self.scale_dtype is not None:
            if y is not dst and not (same and y is x):
                np.copyto(dst, y, casting="unsafe")
            if self.scale_factor is not None:
                dst *= self.scale_factor
            if self.add_offset is not None:
                dst += self.add_offset
        elif y is not dst and not (same and y is x):
            np.copyto(dst, y, casting="unsafe")


def _into(res: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    if out is None:
        return res
    np.copyto(out, res)
    return out


def _isnull(v: Any) -> bool:
    try:
        return bool(np.isnan(v))
    except TypeError:
        return v is None


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


def decoders_for(arrays: Mapping[str, Any], *, times: Times = "numeric") -> dict[str, CFDecoder]:
    """A decoder per opened ``zarr.Array`` (name -> array), from its attributes and metadata."""
    out = {}
    for name, arr in arrays.items():
        fill = arr.fill_value
        out[name] = CFDecoder.from_attrs(dict(arr.attrs), arr.dtype, fill,
                                         zarr_format=int(arr.metadata.zarr_format), times=times)
    return out


# -- cost ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CFCost:
    """Decode vs plain copy of the same batch, same run (medians of ``repeats``)."""

    shape: tuple[int, ...]
    stored_dtype: str
    out_dtype: str
    stored_bytes: int
    decoded_bytes: int
    copy_s: float
    decode_s: float
    repeats: int

    @property
    def ratio(self) -> float:
        return self.decode_s / self.copy_s if self.copy_s > 0 else math.inf

    @property
    def decode_mib_s(self) -> float:
        return self.stored_bytes / (1 << 20) / self.decode_s if self.decode_s > 0 else math.inf

    @property
    def copy_mib_s(self) -> float:
        return self.stored_bytes / (1 << 20) / self.copy_s if self.copy_s > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "stored_dtype": self.stored_dtype, "out_dtype": self.out_dtype,
                "stored_bytes": self.stored_bytes, "decoded_bytes": self.decoded_bytes,
                "copy_s": self.copy_s, "decode_s": self.decode_s, "ratio": self.ratio,
                "copy_mib_s": self.copy_mib_s, "decode_mib_s": self.decode_mib_s, "repeats": self.repeats}


def cf_cost(shape: tuple[int, ...] = (64, 256, 256), stored_dtype: Any = "int16",
            attrs: Mapping[str, Any] | None = None, *, repeats: int = 7, seed: int = 0,
            fill_fraction: float = 0.01) -> CFCost:
    """Time ``CFDecoder.decode`` on one batch against a plain copy of the same stored batch (what a
    loader without decoding does), interleaved in the same run. Default: packed int16 with
    ``scale_factor``/``add_offset`` and a ``_FillValue``, the usual climate-model packing."""
    dtype = np.dtype(stored_dtype)
    if attrs is None:
        attrs = {"scale_factor": 0.01, "add_offset": 273.15, "_FillValue": -32767} if dtype.kind in "iu" else {
            "_FillValue": 1e20}
    rng = np.random.default_rng(seed)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        batch = rng.integers(max(info.min, -30000), min(info.max, 30000), size=shape, dtype=dtype)
    else:
        batch = rng.standard_normal(size=shape).astype(dtype)
    fv = attrs.get("_FillValue")
    if fv is not None and fill_fraction > 0:
        idx = rng.random(shape) < fill_fraction
        batch[idx] = np.asarray(_zarr_v3_fill(fv, dtype)).astype(dtype)
    dec = CFDecoder.from_attrs(attrs, dtype)
    copy_buf = np.empty_like(batch)
    out = np.empty(shape, dec.out_dtype)
    copies, decodes = [], []
    dec.decode(batch, out=out)  # warm up (page faults of the output)
    np.copyto(copy_buf, batch)
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        np.copyto(copy_buf, batch)
        copies.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        dec.decode(batch, out=out)
        decodes.append(time.perf_counter() - t0)
    return CFCost(shape=tuple(shape), stored_dtype=str(dtype), out_dtype=str(dec.out_dtype),
                  stored_bytes=batch.nbytes, decoded_bytes=out.nbytes, copy_s=float(np.median(copies)),
                  decode_s=float(np.median(decodes)), repeats=max(1, repeats))
