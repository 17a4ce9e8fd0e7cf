"""The edge benchmark's baseline: a bare UDP responder that answers every request 202 with
the least parsing that makes a valid response (no SIP library, no broker)."""

import asyncio
import sys


class Bare(asyncio.DatagramProtocol):
    COPY = (b"via:", b"v:", b"from:", b"f:", b"to:", b"t:", b"call-id:", b"i:", b"cseq:")

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        if head[0].startswith(b"SIP/2.0"):
            return
        lines = [b"SIP/2.0 202 Accepted"]
        lines += [line for line in head[1:] if line.lower().startswith(self.COPY)]
        lines.append(b"Content-Length: 0")
        self.transport.sendto(b"\r\n".join(lines) + b"\r\n\r\n", addr)


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(Bare, local_addr=("127.0.0.1", port))
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
