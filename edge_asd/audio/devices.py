"""Finding input devices: a lazy sounddevice import, stable ids, and device resolution.

ALSA card numbers (the ``hw:2,0`` in a device name) and PortAudio indices change across
reboots and USB re-plugging, so a config that says ``device: 3`` records from the wrong mic
one day. Like BirdNET-Go, we derive a *stable id* from sysfs: the USB port path
(``usb-path:1-1.2:0``, which tells identical mics apart) or else vendor:product:serial
(``usb-id:0d8c:0014:ABC:0``); devices that are not USB get ``alsa:<card id>:<dev>`` or
``<host api>:<name>``. A device can be named by index, stable id, or name substring.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edge_asd.core.errors import UserError

logger = logging.getLogger(__name__)

PROC_CARDS = Path("/proc/asound/cards")
SYS_SOUND = Path("/sys/class/sound")
_HW_RE = re.compile(r"\(hw:(\d+),(\d+)\)")
_CARD_RE = re.compile(r"^\s*(\d+)\s+\[([^\]]+?)\s*\]:\s*(.*)$")


class AudioDeviceError(UserError):
    """PortAudio missing, a device that cannot be found, opened or read."""


def import_sounddevice() -> Any:
    """``import sounddevice`` with a fix-it message when the PortAudio library is missing."""
    try:
        import sounddevice
    except OSError as err:  # raised by sounddevice when libportaudio cannot be loaded
        raise AudioDeviceError(
            f"cannot use sound devices: {err}. Install PortAudio: sudo apt-get install libportaudio2"
        ) from err
    except ImportError as err:
        raise AudioDeviceError(
            f"cannot use sound devices: {err}. Install the Python package: pip install sounddevice"
        ) from err
    return sounddevice


def refresh_portaudio() -> None:
    """Re-scan devices: PortAudio lists devices once at initialisation (after a replug, or a
    JACK server started later, the old list is stale)."""
    sd = import_sounddevice()
    sd._terminate()
    sd._initialize()


@dataclass(frozen=True)
class InputDevice:
    index: int
    stable_id: str
    name: str
    hostapi: str
    channels: int
    default_samplerate: float

    def to_dict(self) -> dict:
        return asdict(self)


def read_alsa_cards(proc_cards: Path = PROC_CARDS) -> dict[int, str]:
    """Card number -> card id (the bracketed short name) from ``/proc/asound/cards``."""
    cards: dict[int, str] = {}
    try:
        text = proc_cards.read_text()
    except OSError:
        return cards
    for line in text.splitlines():
        m = _CARD_RE.match(line)
        if m:
            cards[int(m.group(1))] = m.group(2).strip()
    return cards


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def usb_identity(card: int, sys_sound: Path = SYS_SOUND) -> tuple[str | None, str | None]:
    """``(usb port path, "vid:pid[:serial]")`` of ALSA card ``card``; Nones if not USB.

    ``/sys/class/sound/cardN/device`` links to the USB *interface* (``1-1.2:1.0``); its parent
    is the USB device (``1-1.2``), which holds ``idVendor``, ``idProduct`` and ``serial``.
    """
    try:
        iface = (sys_sound / f"card{card}" / "device").resolve(strict=True)
    except OSError:
        return None, None
    dev = iface.parent
    vid, pid = _read(dev / "idVendor"), _read(dev / "idProduct")
    if vid is None or pid is None:
        return None, None
    serial = _read(dev / "serial")
    usb_id = f"{vid}:{pid}" + (f":{serial}" if serial else "")
    return dev.name, usb_id


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_").lower()


def stable_id(name: str, hostapi: str, proc_cards: Path = PROC_CARDS, sys_sound: Path = SYS_SOUND) -> str:
    """The reboot- and replug-proof id of a PortAudio device (see module docstring)."""
    m = _HW_RE.search(name)
    if m:
        card, dev = int(m.group(1)), int(m.group(2))
        usb_path, usb_id = usb_identity(card, sys_sound)
        if usb_path:
            return f"usb-path:{usb_path}:{dev}"
        if usb_id:
            return f"usb-id:{usb_id}:{dev}"
        card_id = read_alsa_cards(proc_cards).get(card)
        if card_id:
            return f"alsa:{_slug(card_id)}:{dev}"
        return f"alsa:{_slug(_HW_RE.sub('', name))}:{dev}"
    api = hostapi.split()[0].lower() if hostapi else "pa"
    return f"{_slug(api)}:{_slug(name)}"


def list_inputs(sd: Any | None = None) -> list[InputDevice]:
    """Every device with at least one input channel."""
    sd = sd or import_sounddevice()
    hostapis = sd.query_hostapis()
    out = []
    for dev in sd.query_devices():
        if int(dev["max_input_channels"]) < 1:
            continue
        api = hostapis[dev["hostapi"]]["name"] if dev["hostapi"] < len(hostapis) else "?"
        out.append(
            InputDevice(
                index=int(dev["index"]),
                stable_id=stable_id(dev["name"], api),
                name=str(dev["name"]),
                hostapi=str(api),
                channels=int(dev["max_input_channels"]),
                default_samplerate=float(dev["default_samplerate"]),
            )
        )
    return out


def describe_inputs(devices: list[InputDevice]) -> str:
    if not devices:
        return "no input devices found (check the sound card, `arecord -l` and membership of the audio group)"
    rows = [f"  [{d.index}] {d.stable_id}  {d.name} ({d.hostapi}, {d.channels} ch)" for d in devices]
    return "available inputs:\n" + "\n".join(rows)


def default_input_index(sd: Any | None = None) -> int | None:
    """PortAudio's default input device (``sounddevice.default`` or the host's), or None."""
    try:
        sd = sd or import_sounddevice()
        info = sd.query_devices(kind="input")
        return int(info["index"])
    except Exception as err:  # no default input (-1), or a PortAudio that cannot say
        logger.debug("no default input device: %s", err)
        return None


def is_default_spec(spec: str | int | None) -> bool:
    """``device:`` unset (or empty) in a config means the default input, not a device named 'None'."""
    return spec is None or not str(spec).strip()


def resolve_device(
    spec: str | int | None, devices: list[InputDevice] | None = None, default_index: int | None = None
) -> InputDevice:
    """Find the input named by ``spec``: an index, a stable id, or a name substring; None or
    empty is the default input (``default_index``, else the first input there is).

    Raises ``AudioDeviceError`` listing the available inputs when nothing or several match.
    """
    devices = list_inputs() if devices is None else devices
    if is_default_spec(spec):
        for d in devices:
            if d.index == default_index:
                return d
        if devices:
            logger.info("no default input device known to PortAudio: using the first input, %s", devices[0].name)
            return devices[0]
        raise AudioDeviceError(f"no default input device. {describe_inputs(devices)}")
    text = str(spec).strip()
    if text.isdigit():
        for d in devices:
            if d.index == int(text):
                return d
        raise AudioDeviceError(f"no input device with index {text}. {describe_inputs(devices)}")
    for d in devices:
        if d.stable_id == text:
            return d
    needle = text.lower()
    exact = [d for d in devices if d.name.lower() == needle]
    if len(exact) == 1:
        return exact[0]
    matches = [d for d in devices if needle in d.name.lower() or needle in f"{d.name}, {d.hostapi}".lower()]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise AudioDeviceError(f"no input device matches {text!r}. {describe_inputs(devices)}")
    raise AudioDeviceError(
        f"input device {text!r} is ambiguous ({len(matches)} match): use its index or stable id. "
        + describe_inputs(matches)
    )
