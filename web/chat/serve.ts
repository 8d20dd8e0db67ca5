// Serves the chat page (dist/www) on loopback or any address:
//   node dist/chat/serve.js [--port 8080] [--host 127.0.0.1]
// then open http://HOST:PORT/?broker=ws://BROKER:7780/v1/link (without ?broker the page uses
// port 7780 on its own host).
import { readFile } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import { extname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";

const kRoot = fileURLToPath(new URL("../www/", import.meta.url));
const kTypes: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".map": "application/json",
};

// Starts the server; resolves with it and the port it listens on (0: an ephemeral one).
export function serveChat(port: number, host = "127.0.0.1"): Promise<{ server: Server; port: number }> {
  const server = createServer(async (request, response) => {
    const path = normalize(new URL(request.url ?? "/", "http://x").pathname).replace(/^(\.\.[/\\])+/, "");
    const file = join(kRoot, path === "/" ? "index.html" : path);
    if (!file.startsWith(kRoot) || !kTypes[extname(file)]) {
      response.writeHead(404).end("not found\n");
      return;
    }
    try {
      const body = await readFile(file);
      response.writeHead(200, { "content-type": kTypes[extname(file)], "cache-control": "no-store" }).end(body);
    } catch {
      response.writeHead(404).end("not found\n");
    }
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      const address = server.address();
      resolve({ server, port: typeof address === "object" && address ? address.port : port });
    });
  });
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const arg = (name: string, fallback: string) => {
    const at = process.argv.indexOf(name);
    return at > 0 ? process.argv[at + 1] : fallback;
  };
  const { port } = await serveChat(Number(arg("--port", "8080")), arg("--host", "127.0.0.1"));
  console.log(`mesh chat on http://${arg("--host", "127.0.0.1")}:${port}/`);
}
