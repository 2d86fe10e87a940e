"""virtio-balloon (virtio 1.2 §5.5): the host asks for guest memory back, the guest
hands over page frame numbers, the host gives those pages' backing to the OS.

Queues (§5.5.2): 0 = inflateq, 1 = deflateq; no stats queue (STATS_VQ is not
offered: nothing here would poll it, and a half-done stats queue pins a guest
buffer for ever).  Config (§5.5.4): ``num_pages`` is the device's target and
``actual`` what the driver reports it holds; the driver writes ``actual``
(§5.5.6), the only writable field.

Inflate (§5.5.6): each request is a device-readable array of le32 page numbers
in 4096-byte units (whatever the guest's page size).  Every number is checked
against guest RAM; those outside it are dropped and counted, the rest are
sorted, deduplicated, coalesced into runs inside one RAM region and handed to
``GuestMemory.discard`` (``MADV_DONTNEED``, or ``MADV_REMOVE`` for shared or
file-backed RAM), so the host's resident memory drops.  Deflate needs no host
work: the guest's next touch of a discarded page faults in a zero page.

Hostile guests (§2.7): a request is capped at ``MAX_PFNS_PER_REQUEST`` page
numbers, and a queue is served about ``PFN_BUDGET`` numbers per loop turn (the
gate of the core's ``serve``); the rest waits for the next turn (after the loop
has polled its other fds), with one retry pending however often the guest
kicks, so a guest flooding the queues cannot hold up the other devices sharing
the loop.
"""

from __future__ import annotations

import array
import struct
import sys
from collections.abc import Callable, Iterator, Sequence

from stratovmm.api import (
    ID_BALLOON,
    DescriptorChain,
    EventLoop,
    GuestMemoryError,
    GuestMemoryProtocol,
    Region,
    VirtioDevice,
)

PAGE_SHIFT = 12                  # §5.5.6: page numbers count 4096-byte pages
PAGE_SIZE = 1 << PAGE_SHIFT
QUEUE_SIZE = 128                 # as QEMU
INFLATEQ, DEFLATEQ = 0, 1        # §5.5.2
# §5.5.3 feature bits
F_MUST_TELL_HOST, F_STATS_VQ, F_DEFLATE_ON_OOM = 0, 1, 2
# §5.5.4 config layout: num_pages le32 (device writes), actual le32 (driver writes)
CONFIG = struct.Struct("<II")
ACTUAL_OFFSET = 4
MAX_PFNS_PER_REQUEST = 4096      # Linux sends at most 256 (VIRTIO_BALLOON_ARRAY_PFNS_MAX)
PFN_BUDGET = 16384               # page numbers examined per loop turn


class BalloonDevice(VirtioDevice):
    """The balloon of one VM with ``ram_size`` bytes of RAM."""

    DEVICE_TYPE = ID_BALLOON
    QUEUE_SIZES = (QUEUE_SIZE, QUEUE_SIZE)

    def __init__(self, device_id: str, ram_size: int, loop: EventLoop,
                 deflate_on_oom: bool = False,
                 on_actual_change: Callable[[int], None] | None = None) -> None:
        super().__init__(device_id)
        self.ram_pages = ram_size >> PAGE_SHIFT
        self.deflate_on_oom = deflate_on_oom
        self._loop = loop
        self._on_actual_change = on_actual_change
        self._num_pages = 0          # guarded by self.lock (config reads on vCPU threads)
        self._target = 0             # the last requested num_pages, guarded by self.lock
        self._target_queued = False  # _set_target waits on the loop
        self._actual = 0             # guarded by self.lock
        self._ram: GuestMemoryProtocol | None = None
        self._turn_pfns = 0          # page numbers examined in this loop turn

    # -- features and config (§5.5.3, §5.5.4) ------------------------------------------------

    def device_features(self) -> int:
        """DEFLATE_ON_OOM when asked for: the guest may take pages back under memory pressure
        (Linux then leaves MemTotal alone and deflates from its OOM notifier)."""
        return (1 << F_DEFLATE_ON_OOM) if self.deflate_on_oom else 0

    def config_space(self) -> bytes:
        """num_pages and actual, little-endian (§5.5.4; VERSION_1 config is le)."""
        return CONFIG.pack(self._num_pages, self._actual)

    @property
    def num_pages(self) -> int:
        """The target: pages the host wants in the balloon."""
        with self.lock:
            return self._num_pages

    @property
    def actual(self) -> int:
        """Pages the driver says the balloon holds."""
        with self.lock:
            return self._actual

    def write_config(self, offset: int, data: bytes) -> None:
        """The driver updates ``actual`` once the device has used its requests (§5.5.6
        step 5); num_pages is the device's request and nothing lies past ``actual``
        without FREE_PAGE_HINT / PAGE_POISON (§5.5.4), so such a write is a guest fault
        and changes nothing.  Runs on a vCPU thread."""
        end = offset + len(data)
        if offset < ACTUAL_OFFSET or end > CONFIG.size:
            self.guest_fault("config-write",
                             f"write of {len(data)} bytes at config offset {offset}: only"
                             f" actual (offset {ACTUAL_OFFSET}, 4 bytes) is writable (§5.5.4)")
            return
        with self.lock:
            raw = bytearray(self.config_space())
            raw[offset:end] = data
            asked = actual = CONFIG.unpack(raw)[1]
            too_big = actual > self.ram_pages
            if too_big:
                actual = self.ram_pages
            changed = actual != self._actual
            self._actual = actual
        if too_big:
            self.guest_fault("actual", f"actual {asked} pages is more than the"
                             f" {self.ram_pages} pages of guest RAM (§5.5.6)")
        if changed and self._on_actual_change is not None:
            self._on_actual_change(actual)

    def request_target(self, pages: int) -> None:
        """Ask for a balloon of ``pages`` pages (any thread: the change is made on the
        device's loop, as the driver's interrupt must follow the new value).  Requests
        that come faster than the loop runs are coalesced: the latest wins, one callback
        waits on the loop."""
        if not 0 <= pages <= self.ram_pages:
            raise ValueError(f"balloon target {pages} pages is outside 0..{self.ram_pages}")
        with self.lock:
            self._target = pages
            if self._target_queued:
                return
            self._target_queued = True
        self._loop.call_soon(self._set_target)

    def _set_target(self) -> None:
        """Store num_pages and raise a configuration-change interrupt (§5.5.6: the driver
        is driven by config change notifications and compares num_pages with actual).
        The interrupt is raised even when the value is the same, as QEMU does: it nudges
        a driver that stopped short of the target (e.g. an allocation failed) to retry."""
        with self.lock:
            self._num_pages = self._target
            self._target_queued = False
        if self.active and self.interrupt is not None:
            self.interrupt.signal_config()

    # -- lifecycle -----------------------------------------------------------------------------

    def on_activate(self) -> None:
        """Keep the RAM object that gives pages back (``GuestMemoryProtocol.discard``), region
        by region."""
        self._ram = self.memory

    def on_reset(self) -> None:
        """After a reset the guest owns all its RAM again and a new driver starts with an
        empty balloon, so actual drops to 0; the target stays, and the next driver
        inflates towards it (it compares num_pages with its own count, §5.5.6)."""
        with self.lock:
            changed = self._actual != 0
            self._actual = 0
        self._ram = None
        if changed and self._on_actual_change is not None:
            self._on_actual_change(0)

    # -- queues (device loop) -----------------------------------------------------------------

    def handle_queue(self, index: int) -> None:
        """Serve inflate or deflate requests, ``PFN_BUDGET`` page numbers per loop turn."""
        self._turn_pfns = 0
        self.serve(index, self._inflate if index == INFLATEQ else self._deflate,
                   gate=self._pfn_gate)

    def _pfn_gate(self) -> float | None:
        """Go on until this turn's page numbers are spent; then again on the next turn."""
        return 0.0 if self._turn_pfns >= PFN_BUDGET else None

    def _inflate(self, chain: DescriptorChain) -> int:
        """Give the request's pages back to the host; used length 0 (§5.5.6: the device
        writes nothing back).

        Done before the request is used: the device may change a page once it has seen
        its number in an inflate request (§5.5.6.2), and the driver must not touch it
        until the request is acknowledged (§5.5.6.1)."""
        numbers = self._page_numbers(chain, "inflate")
        pages = self._in_ram(numbers, "inflate")
        ram = self._ram
        for start, count in page_runs(sorted(set(pages)), ram.regions if ram else ()):
            self._discard(start, count)
        self.counters["inflated_pages"] += len(pages)
        return 0

    def _deflate(self, chain: DescriptorChain) -> int:
        """The guest takes pages back: nothing to do on the host (a discarded page reads
        as zeros and is backed again on first touch); used length 0."""
        numbers = self._page_numbers(chain, "deflate")
        self.counters["deflated_pages"] += len(self._in_ram(numbers, "deflate"))
        return 0

    def _page_numbers(self, chain: DescriptorChain, what: str) -> Sequence[int]:
        """The le32 page numbers of a request (§5.5.6: an array of 32-bit PFNs in
        device-readable buffers), at most ``MAX_PFNS_PER_REQUEST``."""
        memory = self.memory
        assert memory is not None
        self.counters["requests"] += 1
        if chain.writable:
            self.guest_fault("writable", f"{what} request with device-writable buffers"
                             " (§5.5.6: the array is device-readable)")
        length = chain.readable_len
        if length % 4:
            self.guest_fault("length", f"{what} request of {length} bytes is not a whole"
                             " number of 32-bit page numbers; trailing bytes ignored")
        if length > 4 * MAX_PFNS_PER_REQUEST:
            self.guest_fault("oversize", f"{what} request of {length // 4} page numbers; only"
                             f" the first {MAX_PFNS_PER_REQUEST} are used")
            self.counters["dropped_pages"] += length // 4 - MAX_PFNS_PER_REQUEST
        data = chain.read_all(memory, min(length - length % 4, 4 * MAX_PFNS_PER_REQUEST))
        self._turn_pfns += max(1, len(data) // 4)
        numbers = array.array("I", data)
        if sys.byteorder == "big":
            numbers.byteswap()
        self.counters["bytes_read"] += len(data)
        return numbers

    def _in_ram(self, numbers: Sequence[int], what: str) -> list[int]:
        """The page numbers that name a page of guest RAM; the others are dropped and
        counted (a page in the MMIO hole or past the end is not the guest's to give)."""
        memory = self.memory
        assert memory is not None
        good = [n for n in numbers if memory.contains(n << PAGE_SHIFT, PAGE_SIZE)]
        dropped = len(numbers) - len(good)
        if dropped:
            first = next(n for n in numbers if not memory.contains(n << PAGE_SHIFT, PAGE_SIZE))
            self.counters["dropped_pages"] += dropped
            self.guest_fault("pfn", f"{what}: page number {first:#x} is outside guest RAM"
                             f" ({dropped} in this request)", count=dropped)
        return good

    def _discard(self, start: int, count: int) -> None:
        """Give pages [start, start+count) back; a host refusal (e.g. 4 KiB pieces of a
        hugetlbfs mapping) is counted and logged once, and the guest goes on."""
        ram = self._ram
        try:
            if ram is None:
                raise OSError("guest memory cannot give pages back (no GuestMemory.discard)")
            ram.discard(start << PAGE_SHIFT, count << PAGE_SHIFT)
        except (OSError, GuestMemoryError) as exc:
            self.host_error("discard", f"cannot return pages {start:#x}+{count} to the host:"
                            f" {exc}")
            return
        self.counters["discarded_pages"] += count


def page_runs(pages: Sequence[int], regions: Sequence[Region]) -> Iterator[tuple[int, int]]:
    """Coalesce sorted, distinct page numbers into (first page, count) runs, never
    across the end of a RAM region: one ``discard`` must stay inside one region, and
    two regions that touch in guest-physical space need not touch in the host mapping."""
    region_ends = {r.end >> PAGE_SHIFT for r in regions}
    start = prev = -1
    for page in pages:
        if page == prev + 1 and page not in region_ends:
            prev = page
            continue
        if start >= 0:
            yield start, prev - start + 1
        start = prev = page
    if start >= 0:
        yield start, prev - start + 1
