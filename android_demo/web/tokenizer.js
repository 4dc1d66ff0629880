/**
 * The bundle's tokenizer.json on the device, through @huggingface/tokenizers: the same ids as the Python runtime's
 * `tokenizers` (encode with add_special_tokens false: edgeprompt never prepends BOS; decode skipping special tokens,
 * without the clean-up of spaces the Rust decoder does not do either).
 */
import { Tokenizer } from "./vendor/tokenizers.min.mjs";

export async function loadTokenizer(reader) {
  const json = await reader.readJSON("tokenizer.json");
  return new Tokenizer(json, { clean_up_tokenization_spaces: false });
}
