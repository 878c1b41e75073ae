// Guided decoding recognizers (src/engine/guided.h): every prefix of an accepted text is accepted, a
// text is complete exactly when it is whole, and what JSON (RFC 8259) or the choice list rules out is
// rejected at the first byte that makes it impossible.
#include <gtest/gtest.h>

#include "common/error.h"
#include "engine/guided.h"

using namespace llmserve;

namespace {

// Feeds `text` one byte at a time: the number of bytes accepted (text.size() when all are), and
// whether the whole text is complete.
std::pair<size_t, bool> run(const Guide& g, const std::string& text) {
  GuideState s = g.start();
  for (size_t i = 0; i < text.size(); ++i)
    if (!g.feed(s, std::string_view(text).substr(i, 1))) return {i, false};
  return {text.size(), g.complete(s)};
}

}  // namespace

TEST(GuidedJson, AcceptsObjectsAndEveryPrefix) {
  const auto g = Guide::json();
  for (const std::string doc :
       {"{}", " {\"a\": 1}", "{\"a\":[1,-2.5e+3,0,0.25,1E9,true,false,null,{\"b\":{}},[]],\"c\":\"x\\\"\\u00e9\\n\"}",
        "{\"k\": \"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"}", "{\n  \"list\": [\n    1,\n    2\n  ]\n}", "{\"\":\"\"}"}) {
    const auto [n, complete] = run(*g, doc);
    EXPECT_EQ(n, doc.size()) << doc;
    EXPECT_TRUE(complete) << doc;
    for (size_t k = 0; k + 1 < doc.size(); ++k) {  // proper prefixes: accepted, not complete
      GuideState s = g->start();
      ASSERT_TRUE(g->feed(s, doc.substr(0, k))) << doc.substr(0, k);
      EXPECT_FALSE(g->complete(s)) << doc.substr(0, k);
    }
  }
  // Whole multi-byte tokens at once, as the sampler feeds them.
  GuideState s = g->start();
  EXPECT_TRUE(g->feed(s, "{\"a\""));
  EXPECT_TRUE(g->feed(s, ": [1"));
  EXPECT_TRUE(g->feed(s, "0, 2]}"));
  EXPECT_TRUE(g->complete(s));
}

TEST(GuidedJson, RejectsAtTheFirstImpossibleByte) {
  const auto g = Guide::json();
  const std::vector<std::pair<std::string, size_t>> bad = {
      {"[1]", 0},            // the top level is an object
      {"\"s\"", 0},
      {"{}}", 2},            // nothing after the object
      {"{} ", 2},
      {"{'a':1}", 1},        // single quotes
      {"{\"a\" 1}", 5},      // a colon is needed
      {"{\"a\":01}", 6},     // leading zero
      {"{\"a\":1.}", 7},     // a digit after the point
      {"{\"a\":-}", 6},
      {"{\"a\":1e}", 7},
      {"{\"a\":tru}", 8},
      {"{\"a\":nul1}", 8},
      {"{\"a\":[1,]}", 8},   // no trailing commas
      {"{\"a\":1,}", 7},
      {"{\"a\":[1}", 7},     // mismatched closer
      {"{\"a\":\"x\ty\"}", 7},  // raw control character in a string
      {"{\"a\":\"\\x\"}", 7},   // unknown escape
      {"{\"a\":\"\\u12g4\"}", 10},
      {"{\"a\":\"\xc3(\"}", 7},  // bad UTF-8 continuation
      {"{\"a\":\"\xff\"}", 6},
      {"{1:2}", 1},          // keys are strings
  };
  for (const auto& [doc, at] : bad) EXPECT_EQ(run(*g, doc).first, at) << doc;
  // A dead state stays dead.
  GuideState s = g->start();
  EXPECT_FALSE(g->feed(s, "x"));
  EXPECT_FALSE(g->feed(s, "{"));
  EXPECT_FALSE(g->complete(s));
}

TEST(GuidedJson, BoundsWhitespaceRunsAndDepth) {
  const auto g = Guide::json();
  const std::string ws(Guide::kMaxWhitespace, ' ');
  EXPECT_TRUE(run(*g, "{" + ws + "\"a\":" + ws + "1" + ws + "}").second);
  EXPECT_EQ(run(*g, "{" + ws + " ").first, 1 + ws.size());  // one more space is one too many
  std::string deep = "{\"a\":";
  for (int d = 1; d < Guide::kMaxDepth; ++d) deep += "[";
  EXPECT_EQ(run(*g, deep).first, deep.size());  // kMaxDepth levels with the object
  EXPECT_EQ(run(*g, deep + "[").first, deep.size());
  std::string closed = deep;
  for (int d = 1; d < Guide::kMaxDepth; ++d) closed += "]";
  EXPECT_TRUE(run(*g, closed + "}").second);
}

TEST(GuidedChoice, ExactlyOneOfTheStrings) {
  const auto g = Guide::choice({"yes", "no", "maybe", "y", "yes"});
  for (const std::string c : {"yes", "no", "maybe", "y"}) EXPECT_EQ(run(*g, c), std::make_pair(c.size(), true)) << c;
  EXPECT_EQ(run(*g, "ye").second, false);   // a prefix only
  EXPECT_EQ(run(*g, "yess").first, 3u);
  EXPECT_EQ(run(*g, "n0").first, 1u);
  EXPECT_EQ(run(*g, "Yes").first, 0u);
  GuideState s = g->start();
  EXPECT_TRUE(g->feed(s, "y"));
  EXPECT_TRUE(g->complete(s));  // "y" is whole, and "yes" may still follow
  EXPECT_TRUE(g->feed(s, "es"));
  EXPECT_TRUE(g->complete(s));
  // Nested prefixes (the run of candidates is narrowed by binary search).
  const auto h = Guide::choice({"abd", "a", "ba", "abc", "b", "ab"});
  for (const std::string c : {"a", "ab", "abc", "abd", "b", "ba"}) EXPECT_EQ(run(*h, c), std::make_pair(c.size(), true)) << c;
  EXPECT_EQ(run(*h, "abe").first, 2u);
  EXPECT_EQ(run(*h, "bb").first, 1u);
  EXPECT_EQ(run(*h, "c").first, 0u);
  EXPECT_THROW(Guide::choice({}), Error);
  EXPECT_THROW(Guide::choice({"a", ""}), Error);
}

// The sampler's fast path: plain string bytes are exactly those a string state takes without leaving it.
TEST(GuidedJson, PlainStringBytes) {
  const auto g = Guide::json();
  for (const std::string t : {"abc", " x y", "caf\xc3\xa9", "\xe2\x82\xac", "{}[]:,"})
    EXPECT_TRUE(plain_string_bytes(t)) << t;
  for (const std::string t : {"a\"", "\\n", "\t", "\xc3", "\xe2\x82", "\xff", ""})
    EXPECT_EQ(plain_string_bytes(t), t.empty()) << t;
  GuideState s = g->start();
  ASSERT_TRUE(g->feed(s, "{\"k"));
  EXPECT_TRUE(g->in_plain_string(s));
  ASSERT_TRUE(g->feed(s, "caf\xc3"));
  EXPECT_FALSE(g->in_plain_string(s));  // inside a character
  ASSERT_TRUE(g->feed(s, "\xa9\\"));
  EXPECT_FALSE(g->in_plain_string(s));  // after a backslash
  ASSERT_TRUE(g->feed(s, "n\": "));
  EXPECT_FALSE(g->in_plain_string(s));  // a value expected, not a string
}
