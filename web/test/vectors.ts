// The published Noise test vectors the C++ tests read too (tests/data/noise-vectors/).
import { readFileSync } from "node:fs";

export interface Vector {
  protocol_name: string;
  init_prologue: string;
  init_static?: string;
  init_ephemeral: string;
  resp_prologue: string;
  resp_static?: string;
  resp_ephemeral: string;
  handshake_hash?: string;
  messages: { payload: string; ciphertext: string }[];
}

// MESH_NOISE_VECTORS_DIR when built elsewhere (tests/web/web.sh), else the source tree.
const kDir = process.env.MESH_NOISE_VECTORS_DIR
  ? new URL(`file://${process.env.MESH_NOISE_VECTORS_DIR}/`)
  : new URL("../../../tests/data/noise-vectors/", import.meta.url);

export function loadVectors(file: string): Vector[] {
  return (JSON.parse(readFileSync(new URL(file, kDir), "utf8")) as { vectors: Vector[] }).vectors;
}
