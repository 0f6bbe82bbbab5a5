// index.ts - the titan-client package: TitanClient and its errors.
export { TitanClient, parseReplyHeader } from "./client";
export type {
  TitanClientOptions, TitanReply, Tensor, FloatArray, MatmulResidentOptions,
  TokenIds, EmbedInput, EmbedOptions, EncoderUsage, Embeddings, RerankOptions, RerankResult, Ranking,
} from "./client";
export { TitanError, TitanBusyError, TitanTimeoutError } from "./errors";
import { curveKeyPair } from "zeromq";
/** A fresh CURVE key pair, Z85 strings (zeromq's curveKeyPair). */
export function makeKeyPair(): { publicKey: string; secretKey: string } {
  return curveKeyPair();
}
