// mesh-broker's TypeScript client (docs/WEB.md).
export { fromBase64Url, toBase64Url, utf8 } from "./bytes.js";
export { type BrokerTrust, checkBroker, parseAuthorityKey, TrustError, verifyNodeCertificate } from "./cert.js";
export * from "./gen/mesh/v1/wire_pb.js";
export { formatKeyFile, generateKeyPair, keyPairOf, parseKeyFile, parsePeerId, peerIdText } from "./keys.js";
export { connect, type ConnectOptions, Link, LinkError } from "./link.js";
export { HandshakeState, type KeyPair, NoiseError, type Suite } from "./noise.js";
export { openSealed, sealPayload, SealError } from "./seal.js";
export {
  type DedupStore,
  kMaxGoAwayRetryMs,
  type Message,
  type PendingStore,
  SendStatus,
  type StoredSend,
  type SendResult,
  Session,
  type SessionOptions,
} from "./session.js";
export type { WebSocketConstructor } from "./transport.js";
