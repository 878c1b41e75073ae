// The tokenizer against Hugging Face tokenizers' own output (../shared/fixtures/tokenizer).
#include <gtest/gtest.h>

#include <thread>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/error.h"
#include "common/file_util.h"
#include "tokenizer/regex.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_docs.h"
#include "tokenizer/unicode.h"

using namespace llmserve;
using json = nlohmann::json;

namespace {

std::string slurp(const std::string& p) { return read_file(p); }

const std::string kFix = LLMSERVE_FIXTURES;

std::string model_dir(const std::string& name) { return kFix + "/models/tiny-" + name; }

const Tokenizer& tokenizer(const std::string& name) {
  static std::map<std::string, std::unique_ptr<Tokenizer>> cache;
  auto& t = cache[name];
  if (!t)
    t = std::make_unique<Tokenizer>(slurp(model_dir(name) + "/tokenizer.json"),
                                    slurp(model_dir(name) + "/tokenizer_config.json"));
  return *t;
}

std::vector<json> hf_cases(const std::string& name) {
  std::vector<json> out;
  std::ifstream f(kFix + "/tokenizer/" + name + "/hf_cases.jsonl");
  for (std::string line; std::getline(f, line);)
    if (!line.empty()) out.push_back(json::parse(line));
  return out;
}

std::string show(const std::vector<int32_t>& v) {
  std::string s;
  for (auto x : v) s += std::to_string(x) + " ";
  return s;
}

}  // namespace

class TokenizerFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(TokenizerFixture, HfCasesEncodeAndDecode) {
  const Tokenizer& tok = tokenizer(GetParam());
  const auto cases = hf_cases(GetParam());
  ASSERT_GT(cases.size(), 50u);
  int bad = 0;
  for (const auto& c : cases) {
    const std::string text = c["text"].get<std::string>();
    const auto want = c["ids"].get<std::vector<int32_t>>();
    const auto got = tok.encode(text, false);
    if (got != want) {
      ++bad;
      ADD_FAILURE() << "encode " << json(text).dump() << "\n  got  " << show(got) << "\n  want " << show(want);
    }
    EXPECT_EQ(tok.decode(want), c["decoded"].get<std::string>()) << json(text).dump();
  }
  EXPECT_EQ(bad, 0);
}

TEST_P(TokenizerFixture, VocabTestCases) {
  const Tokenizer& tok = tokenizer(GetParam());
  const std::string inp = slurp(kFix + "/tokenizer/" + GetParam() + "/cases.inp");
  const std::string outp = slurp(kFix + "/tokenizer/" + GetParam() + "/cases.out");
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> inputs;
  for (size_t pos = 0;;) {
    const size_t next = inp.find(sep, pos);
    if (next == std::string::npos) break;
    inputs.push_back(inp.substr(pos, next - pos));
    pos = next + sep.size();
  }
  std::istringstream lines(outp);
  std::string line;
  size_t n = 0;
  for (const auto& text : inputs) {
    ASSERT_TRUE(std::getline(lines, line)) << "cases.out has fewer lines than inputs";
    std::vector<int32_t> want;
    std::istringstream ids(line);
    for (int32_t x; ids >> x;) want.push_back(x);
    EXPECT_EQ(tok.encode(text, false), want) << json(text).dump();
    ++n;
  }
  EXPECT_GT(n, 20u);
}

TEST_P(TokenizerFixture, StreamingDecodeEqualsWholeDecode) {
  const Tokenizer& tok = tokenizer(GetParam());
  for (const auto& c : hf_cases(GetParam())) {
    const auto ids = c["ids"].get<std::vector<int32_t>>();
    for (bool skip : {false, true}) {
      IncrementalDecoder dec(tok, skip);
      std::string streamed;
      for (int32_t id : ids) {
        const std::string chunk = dec.add(id);
        // Every chunk is valid UTF-8 on its own.
        EXPECT_EQ(unicode::utf8_lossy(chunk), chunk);
        streamed += chunk;
      }
      streamed += dec.finish();
      EXPECT_EQ(streamed, tok.decode(ids, skip)) << c["text"].dump();
    }
  }
}

// The table behind log-probability entries' token texts: decode({id}) for every id of the vocabulary
// (special tokens, byte tokens that are half a UTF-8 character, added tokens), the same from threads.
TEST_P(TokenizerFixture, TokenStringIsTheDecodeOfTheToken) {
  const Tokenizer& tok = tokenizer(GetParam());
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int w = 0; w < 4; ++w)
    threads.emplace_back([&, w] {
      for (int32_t id = w; id < tok.vocab_size(); id += 4)
        if (tok.token_string(id) != tok.decode({id}, false)) ++mismatches[w];
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(mismatches, std::vector<int>(4, 0));
  EXPECT_THROW(tok.token_string(tok.vocab_size()), Error);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TokenizerFixture, ::testing::Values("qwen2", "llama3"));

TEST(Tokenizer, SpecialTokensInTextAndSkipping) {
  const Tokenizer& tok = tokenizer("qwen2");
  auto ids = tok.encode("<|im_start|>user\nhi<|im_end|>", false);
  ASSERT_GE(ids.size(), 4u);
  EXPECT_EQ(ids.front(), 151644);
  EXPECT_EQ(ids.back(), 151645);
  EXPECT_TRUE(tok.is_special(151644));
  EXPECT_EQ(tok.decode(ids, true), "user\nhi");
  EXPECT_EQ(tok.decode(ids, false), "<|im_start|>user\nhi<|im_end|>");
}

TEST(Tokenizer, InvalidUtf8IsReplacedLikeHf) {
  // Byte tokens: 0xE4 alone (a cut 3-byte sequence) then 'a'.
  const Tokenizer& tok = tokenizer("qwen2");
  auto e4 = tok.token_to_id(byte_to_unicode()[0xE4]);
  auto a = tok.token_to_id("a");
  ASSERT_TRUE(e4 && a);
  EXPECT_EQ(tok.decode({*e4, *a}), "\xEF\xBF\xBD" "a");
  IncrementalDecoder dec(tok, false);
  EXPECT_EQ(dec.add(*e4), "");  // held back: more bytes could complete it
  EXPECT_EQ(dec.add(*a), "\xEF\xBF\xBD" "a");
  EXPECT_EQ(dec.finish(), "");
}

// Ids Hugging Face tokenizers 0.23.3 gives (encode, no special tokens) where the Unicode versions
// matter: Qwen2's NFC leaves U+1AC3 before U+0335 (normalization tables of Unicode 9.0); Llama 3's
// regex takes Garay digits (Unicode 16.0) for numbers, grouped with "12" three at a time, and a Garay
// vowel sign as a letter after its space.
TEST(Tokenizer, UnicodeVersionsAreHfs) {
  EXPECT_EQ(tokenizer("qwen2").encode("a\u1AC3\u0335x"), (std::vector<int32_t>{64, 157, 104, 225, 136, 113, 87}));
  EXPECT_EQ(tokenizer("llama3").encode("12\U00010D40\U00010D41 7"),
            (std::vector<int32_t>{717, 172, 238, 113, 222, 172, 238, 113, 223, 220, 22}));
  EXPECT_EQ(tokenizer("llama3").encode("x \U00010D4A\U00010D4B!"),
            (std::vector<int32_t>{87, 109697, 238, 113, 232, 172, 238, 113, 233, 0}));
}

TEST(Unicode, Nfc) {
  // e + combining acute -> é; Hangul jamo compose; a singleton (Angstrom sign) maps to Å.
  EXPECT_EQ(unicode::nfc_utf8("e\xCC\x81"), "\xC3\xA9");
  EXPECT_EQ(unicode::encode_utf8(unicode::nfc(U"\u1100\u1161\u11A8")), unicode::encode_utf8(U"\uAC01"));
  EXPECT_EQ(unicode::encode_utf8(unicode::nfc(U"\u212B")), unicode::encode_utf8(U"\u00C5"));
  // Canonical reordering: dot below (220) before acute (230) whatever the input order.
  EXPECT_EQ(unicode::encode_utf8(unicode::nfc(U"q\u0301\u0323")), unicode::encode_utf8(U"q\u0323\u0301"));
  EXPECT_EQ(unicode::nfc_utf8("plain ascii"), "plain ascii");
  // Hugging Face tokenizers normalizes with Unicode 9.0's tables: a mark added later (U+1AC3, Unicode
  // 14.0, class 220 since) has class 0 there, so it is not reordered before U+0335 (class 1).
  EXPECT_EQ(unicode::encode_utf8(unicode::nfc(U"a\u1AC3\u0335")), unicode::encode_utf8(U"a\u1AC3\u0335"));
  EXPECT_EQ(unicode::encode_utf8(unicode::nfc(U"q\u0323\u0335")), unicode::encode_utf8(U"q\u0335\u0323"));
}

TEST(Unicode, Utf8LengthMatchesTheEncoder) {
  for (char32_t c : {U'a', U'\u00e9', U'\u4e2d', U'\U0001F999', U'\u07ff', U'\u0800', U'\uffff', U'\U00010000'}) {
    std::string s;
    unicode::append_utf8(s, c);
    EXPECT_EQ(unicode::utf8_length(c), s.size()) << static_cast<uint32_t>(c);
  }
}

TEST(Unicode, Categories) {
  EXPECT_EQ(unicode::category(U'a'), unicode::Cat::Ll);
  EXPECT_EQ(unicode::category(U'中'), unicode::Cat::Lo);
  EXPECT_EQ(unicode::category(U'½'), unicode::Cat::No);
  EXPECT_EQ(unicode::category(0x1F999), unicode::Cat::So);  // 🦙
  EXPECT_EQ(unicode::category(0x10FFFF), unicode::Cat::Cn);
  // Unicode 16.0's, as the regexes of Hugging Face tokenizers 0.23 (Oniguruma) see them: what 15.0 and
  // 16.0 added is there, what 17.0 added is not.
  EXPECT_EQ(unicode::category(0x1E4F0), unicode::Cat::Nd);  // NAG MUNDARI DIGIT ZERO (15.0)
  EXPECT_EQ(unicode::category(0x10D40), unicode::Cat::Nd);  // GARAY DIGIT ZERO (16.0)
  EXPECT_EQ(unicode::category(0x1C89), unicode::Cat::Lu);   // CYRILLIC CAPITAL LETTER TJE (16.0)
  EXPECT_EQ(unicode::category(0x088F), unicode::Cat::Cn);   // assigned in 17.0
  EXPECT_TRUE(unicode::is_white_space(0x3000));
  EXPECT_FALSE(unicode::is_white_space(0x200B));  // zero width space is not White_Space
}

TEST(Regex, LeftmostFirstAlternationAndLookahead) {
  Regex re("\\s+(?!\\S)|\\s+");
  std::u32string t = U"a   b";
  size_t b, e;
  ASSERT_TRUE(re.search(t, 0, b, e));
  EXPECT_EQ(b, 1u);
  EXPECT_EQ(e, 3u);  // leaves one space to attach to "b"
  Regex ci("(?i:'s|'t)");
  ASSERT_TRUE(ci.search(U"IT'S", 0, b, e));
  EXPECT_EQ(b, 2u);
  Regex rep("\\p{N}{1,3}");
  ASSERT_TRUE(rep.search(U"x12345", 0, b, e));
  EXPECT_EQ(e - b, 3u);
  EXPECT_THROW(Regex("a++"), Error);
  EXPECT_THROW(Regex("(?<name>x)"), Error);
  EXPECT_THROW(Regex("[a-"), Error);
}

// vLLM's /tokenizer_info: tokenizer_config.json as transformers loads it, without its file paths, with the
// fast class AutoTokenizer makes and the served chat template.
TEST(TokenizerDocs, InfoAsVllmReportsIt) {
  TokenizerDocs d;
  d.tokenizer_config_json = R"({"add_bos_token": false, "vocab_file": "v.json", "merges_file": "m.txt",
                               "tokenizer_class": "Qwen2Tokenizer", "chat_template": "T", "model_max_length": 131072})";
  d.chat_template = "T";
  const auto j = nlohmann::ordered_json::parse(d.info());
  EXPECT_EQ(j.dump(), R"({"add_bos_token":false,"tokenizer_class":"Qwen2TokenizerFast","chat_template":"T","model_max_length":131072})");
  EXPECT_EQ(nlohmann::json::parse(d.info("{{ messages }}"))["chat_template"], "{{ messages }}");  // the configuration's
  d.tokenizer_config_json = R"({"tokenizer_class": "PreTrainedTokenizerFast"})";
  d.chat_template = "from chat_template.jinja";
  EXPECT_EQ(nlohmann::json::parse(d.info()),
            (nlohmann::json{{"tokenizer_class", "PreTrainedTokenizerFast"}, {"chat_template", "from chat_template.jinja"}}));
  TokenizerDocs bare;  // no configuration, no template
  EXPECT_EQ(bare.info(), R"({"tokenizer_class":"PreTrainedTokenizerFast"})");
  bare.tokenizer_config_json = "[1]";
  EXPECT_THROW(bare.info(), Error);
}

TEST(Tokenizer, BadTokenizerJsonIsAnError) {
  EXPECT_THROW(Tokenizer("{not json", ""), Error);
  EXPECT_THROW(Tokenizer(R"({"model": {"type": "Unigram", "vocab": []}})", ""), Error);
  json tj = json::parse(slurp(model_dir("qwen2") + "/tokenizer.json"));
  tj["pre_tokenizer"] = {{"type", "Metaspace"}};
  auto error_of = [](const json& j) {
    try {
      Tokenizer t(j.dump(), "");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(error_of(tj).find("a ByteLevel pre-tokenizer and decoder go together"), std::string::npos) << error_of(tj);
  json spm = json::parse(slurp(std::string(LLMSERVE_SOURCE_DIR) + "/tests/tokenizer/spm/legacy/tokenizer.json"));
  spm["decoder"] = {{"type", "WordPiece"}};
  EXPECT_NE(error_of(spm).find("decoder 'WordPiece' is not supported"), std::string::npos) << error_of(spm);
  spm["decoder"] = nullptr;
  EXPECT_NE(error_of(spm).find("needs a decoder"), std::string::npos) << error_of(spm);
  spm["decoder"] = {{"type", "Fuse"}};
  spm["normalizer"] = {{"type", "Lowercase"}};
  EXPECT_NE(error_of(spm).find("normalizer 'Lowercase' is not supported"), std::string::npos) << error_of(spm);
}

// SentencePiece-style BPE (Llama 2, Mistral, TinyLlama): characters with byte fallback and the "▁" word
// marker, in the three layouts tokenizer.json has for them (tests/tokenizer/make_spm_cases.py: the
// expectations are HF tokenizers' own encode / decode of those tokenizers).
TEST(Tokenizer, SentencePieceStyleBpeAsHuggingFace) {
  for (const char* layout : {"legacy", "metaspace", "split"}) {
    SCOPED_TRACE(layout);
    const std::string dir = std::string(LLMSERVE_SOURCE_DIR) + "/tests/tokenizer/spm/" + layout;
    const Tokenizer tok(slurp(dir + "/tokenizer.json"), slurp(dir + "/tokenizer_config.json"));
    const json cases = json::parse(slurp(dir + "/cases.json"))["cases"];
    ASSERT_GT(cases.size(), 10u);
    int byte_fallbacks = 0;
    for (const auto& c : cases) {
      if (c.contains("decode_only")) {  // byte tokens that are not UTF-8 together: one U+FFFD each
        EXPECT_EQ(tok.decode(c["decode_only"].get<std::vector<int32_t>>()), c["decoded"].get<std::string>());
        continue;
      }
      const std::string text = c["text"].get<std::string>();
      SCOPED_TRACE(text);
      const auto ids = c["ids"].get<std::vector<int32_t>>(), with_special = c["ids_special"].get<std::vector<int32_t>>();
      EXPECT_EQ(tok.encode(text, false), ids);
      EXPECT_EQ(tok.encode(text, true), with_special);
      EXPECT_EQ(tok.decode(with_special, false), c["decoded"].get<std::string>());
      EXPECT_EQ(tok.decode(with_special, true), c["decoded_skip"].get<std::string>());
      const auto names = c["tokens"].get<std::vector<std::string>>();
      for (size_t k = 0; k < ids.size(); ++k) {
        EXPECT_EQ(tok.token_string(ids[k]), names[k]) << "token " << ids[k];
        byte_fallbacks += tok.id_to_token(ids[k]).rfind("<0x", 0) == 0;
      }
      // Streamed, the text continues a prompt: the same text, its first marker kept as a space.
      IncrementalDecoder inc(tok, true);
      std::string streamed;
      for (int32_t id : with_special) streamed += inc.add(id);
      streamed += inc.finish();
      const std::string whole = c["decoded_skip"].get<std::string>();
      EXPECT_TRUE(streamed == whole || streamed == " " + whole) << "streamed '" << streamed << "'";
    }
    EXPECT_GT(byte_fallbacks, 10);  // (the cases meant something: characters outside the vocabulary)
  }
}

// A pair of texts as cross-encoders read them (HF's tokenizer(text=a, text_pair=b); the expected ids are
// what HF tokenizers 0.23 gives for these documents).
TEST(Tokenizer, PairsAsHuggingFaceEncodesThem) {
  // A ByteLevel post-processor (Qwen2): the two texts' tokens one after the other.
  Tokenizer qwen(slurp(model_dir("qwen2") + "/tokenizer.json"), "");
  EXPECT_EQ(qwen.encode_pair("Hello world", "How are you?"), (std::vector<int32_t>{9707, 1879, 4340, 525, 498, 30}));
  // Llama 3's release template: <|begin_of_text|> A <|begin_of_text|> B; without special tokens A B.
  json j = json::parse(slurp(model_dir("llama3") + "/tokenizer.json"));
  j["post_processor"] = json::parse(R"({"type": "TemplateProcessing",
      "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
      "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
               {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
      "special_tokens": {}})");
  Tokenizer llama(j.dump(), "");
  EXPECT_EQ(llama.encode_pair("Hello", "world"), (std::vector<int32_t>{128000, 9906, 128000, 14957}));
  EXPECT_EQ(llama.encode_pair("Hello", "world", false), (std::vector<int32_t>{9906, 14957}));
  // No template, tokenizer_config's add_bos_token: each text's special tokens around it (as HF's Llama
  // tokenizers build their pair template from the same flags).
  Tokenizer with_bos(slurp(model_dir("llama3") + "/tokenizer.json"), R"({"add_bos_token": true, "bos_token": "<|begin_of_text|>"})");
  EXPECT_EQ(with_bos.encode_pair("Hello", "world"), (std::vector<int32_t>{128000, 9906, 128000, 14957}));
}

TEST(Tokenizer, BosFromTokenizerConfigAndTemplateProcessing) {
  const std::string tj = slurp(model_dir("llama3") + "/tokenizer.json");
  // tokenizer_config's add_bos_token (with a ByteLevel post-processor) prepends BOS...
  Tokenizer with_bos(tj, R"({"add_bos_token": true, "bos_token": "<|begin_of_text|>"})");
  EXPECT_EQ(with_bos.encode("Hello", true).front(), 128000);
  EXPECT_EQ(with_bos.encode("Hello", false).front(), 9906);
  // ...and so does a TemplateProcessing post-processor, as in the Llama 3 release.
  json j = json::parse(tj);
  j["post_processor"] = json::parse(R"({"type": "TemplateProcessing",
      "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
      "pair": [], "special_tokens": {}})");
  Tokenizer tp(j.dump(), "");
  auto ids = tp.encode("Hello", true);
  ASSERT_EQ(ids.size(), 2u);
  EXPECT_EQ(ids[0], 128000);
  EXPECT_EQ(tp.encode("Hello", false).size(), 1u);
}
