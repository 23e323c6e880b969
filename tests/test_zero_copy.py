"""Zero-copy proven by memory: a 512 MiB numpy array or ``bytes`` payload
crosses tcp without the sender copying it and with the receiver holding it
about once (psutil, child processes)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("numpy")

SIZE = 512 * 2**20

# Each side runs in its own fresh process so its peak RSS is its own. The
# sender touches its array first, so what is measured is what *sending* adds.
SCRIPT = textwrap.dedent(
    """
    import asyncio, sys, threading, time
    import numpy as np, psutil
    import distributed_comm as comm
    from distributed_comm.protocol import to_serialize

    SIZE = 512 * 2**20
    me = psutil.Process()
    peak = [0]

    def sample():
        while True:
            peak[0] = max(peak[0], me.memory_info().rss)
            time.sleep(0.002)

    async def receive(ready):
        got = asyncio.get_running_loop().create_future()

        async def handle(c):
            msg = await c.read()
            got.set_result(msg["x"])
            await c.write({"ok": True})

        listener = await comm.listen("tcp://127.0.0.1:0", handle)
        print(listener.contact_address, flush=True)
        base = me.memory_info().rss
        peak[0] = base
        threading.Thread(target=sample, daemon=True).start()
        x = await asyncio.wait_for(got, 120)
        await asyncio.sleep(0.2)
        if KIND == "bytes":
            assert type(x) is bytes and len(x) == SIZE and x[12345] == 12345 % 256
            assert x[-1] == (SIZE - 1) % 256
        else:
            assert x.nbytes == SIZE and x[12345] == 12345 % 256 and x.flags.writeable
        print("added", peak[0] - base, flush=True)
        listener.stop()

    async def send(address):
        x = np.arange(SIZE, dtype="u1")  # 0..255 repeating
        if KIND == "bytes":
            x = x.tobytes()
        c = await comm.connect(address)
        base = me.memory_info().rss
        peak[0] = base
        threading.Thread(target=sample, daemon=True).start()
        await c.write({"x": to_serialize(x)})
        assert await asyncio.wait_for(c.read(), 120) == {"ok": True}
        await asyncio.sleep(0.05)
        print("added", peak[0] - base, flush=True)
        await c.close()

    KIND = sys.argv[2]
    if sys.argv[1] == "receive":
        asyncio.run(receive(None))
    else:
        asyncio.run(send(sys.argv[3]))
    """
)


@pytest.mark.parametrize("kind", ["numpy", "bytes"])
def test_512_mib_payload_is_not_copied(kind):
    receiver = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, "receive", kind], stdout=subprocess.PIPE, text=True
    )
    try:
        address = receiver.stdout.readline().strip()
        assert address.startswith("tcp://"), address
        sent = subprocess.run(
            [sys.executable, "-c", SCRIPT, "send", kind, address],
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert sent.returncode == 0, sent.stderr
        received_out, _ = receiver.communicate(timeout=60)
    finally:
        receiver.kill()
    sender_added = int(sent.stdout.split("added")[1])
    receiver_added = int(received_out.split("added")[1])
    assert sender_added < 64 * 2**20, f"sender added {sender_added / 2**20:.0f} MiB"
    assert receiver_added < 1.1 * SIZE, f"receiver added {receiver_added / 2**20:.0f} MiB"
    assert receiver_added > 0.9 * SIZE  # it did receive the array
