"""The Kubernetes API emulator (tests/support/kube_api.py) as its own process, for
benchmarks with several daemon processes.

``python bench/kubeapi.py DIR`` prints the path of a kubeconfig pointing at it (in DIR)
and serves until SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.kube_api import KubeApi


async def serve(directory: Path) -> None:
    async with KubeApi() as api:
        print(api.kubeconfig(directory), flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(serve(Path(sys.argv[1])))
