// Chat templates against transformers' apply_chat_template (../shared/fixtures/chat).
#include <gtest/gtest.h>
#include <cstdio>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "chat/chat_template.h"
#include "chat/jinja.h"
#include "common/error.h"
#include "common/file_util.h"
#include "tokenizer/tokenizer.h"

using namespace llmserve;
using ojson = nlohmann::ordered_json;

namespace {

std::string slurp(const std::string& p) { return read_file(p); }

const std::string kFix = LLMSERVE_FIXTURES;

struct Case {
  std::string name, template_config, tokenizer_dir;
};
// How gtest names a case (otherwise it dumps the struct's bytes into the test name).
void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

std::string render_one(const ChatTemplate& t, const ojson& row) {
  ChatRenderOptions o;
  o.add_generation_prompt = row["add_generation_prompt"].get<bool>();
  o.tools = row["tools"];
  o.template_kwargs = row["template_kwargs"];
  return t.render(row["messages"], o);
}

}  // namespace

class ChatFixture : public ::testing::TestWithParam<Case> {};

TEST_P(ChatFixture, RenderingIsByteIdenticalAndIdsEqual) {
  const Case& c = GetParam();
  const ojson cfg = ojson::parse(slurp(c.template_config));
  ojson special = ojson::object();
  for (const char* k : {"bos_token", "eos_token", "unk_token", "pad_token"})
    if (cfg.contains(k) && cfg[k].is_string()) special[k] = cfg[k];
  ChatTemplate t(cfg["chat_template"].get<std::string>(), special);
  Tokenizer tok(slurp(c.tokenizer_dir + "/tokenizer.json"), slurp(c.tokenizer_dir + "/tokenizer_config.json"));
  std::ifstream f(kFix + "/chat/" + c.name + ".jsonl");
  int n = 0;
  for (std::string line; std::getline(f, line);) {
    if (line.empty()) continue;
    const ojson row = ojson::parse(line);
    std::string got;
    try {
      got = render_one(t, row);
    } catch (const Error& e) {
      ADD_FAILURE() << c.name << " case " << n << ": " << e.what();
      ++n;
      continue;
    }
    EXPECT_EQ(got, row["rendered"].get<std::string>()) << c.name << " case " << n;
    if (!row["ids"].is_null()) {
      EXPECT_EQ(tok.encode(got, false), row["ids"].get<std::vector<int32_t>>()) << c.name << " case " << n;
    }
    ++n;
  }
  EXPECT_GE(n, 5);
}

INSTANTIATE_TEST_SUITE_P(
    Fixtures, ChatFixture,
    ::testing::Values(Case{"qwen2.5", kFix + "/models/tiny-qwen2/tokenizer_config.json", kFix + "/models/tiny-qwen2"},
                      Case{"llama3", kFix + "/models/tiny-llama3/tokenizer_config.json", kFix + "/models/tiny-llama3"},
                      Case{"qwen3", kFix + "/chat/qwen3/tokenizer_config.json", kFix + "/models/tiny-qwen2"}),
    [](const auto& info) { return info.param.name == "qwen2.5" ? std::string("qwen2_5") : info.param.name; });

namespace {
std::string render(const std::string& src, const ojson& vars = ojson::object()) {
  jinja::Dict d;
  for (auto it = vars.begin(); it != vars.end(); ++it) d.emplace_back(it.key(), jinja::Value::from_json(it.value()));
  return jinja::Template(src).render(d);
}
}  // namespace

TEST(Jinja, ExpressionsAndFilters) {
  EXPECT_EQ(render("{{ 1 + 2 * 3 }}|{{ 7 // 2 }}|{{ -7 // 2 }}|{{ 7 % 3 }}|{{ 2 ** 10 }}|{{ 7 / 2 }}"), "7|3|-4|1|1024|3.5");
  EXPECT_EQ(render("{{ 'a' ~ 1 ~ none }}|{{ [1, 2] + [3] }}|{{ {'k': 'v'} }}"), "a1None|[1, 2, 3]|{'k': 'v'}");
  EXPECT_EQ(render("{{ x[::-1] }}|{{ x[1:] }}|{{ x[-1] }}|{{ s[1:3] }}", {{"x", {1, 2, 3}}, {"s", "hello"}}), "[3, 2, 1]|[2, 3]|3|el");
  EXPECT_EQ(render("{{ ' a b '.strip() }}|{{ 'a,b,c'.split(',')[1] }}|{{ 'x</think>y'.split('</think>')[-1] }}"), "a b|b|y");
  EXPECT_EQ(render("{{ 'Hi'.startswith('H') }}|{{ 'abc'.replace('b', 'X') }}|{{ '\\n\\nx'.lstrip('\\n') }}"), "True|aXc|x");
  // Python's whitespace (str.isspace: no-break and ideographic spaces too) and code points, not bytes,
  // as Jinja2 renders them.
  EXPECT_EQ(render("{{ '\u3000x\u00a0' | trim }}|{{ '\u2003y\u0085'.strip() }}|{{ 'z\u3002\u3002'.rstrip('\u3002') }}|{{ '\u00a0w'.lstrip() }}"),
            "x|y|z|w");
  EXPECT_EQ(render("{{ s[1] }}|{{ s[::-1] }}|{{ s[1:3] }}|{{ s | reverse }}|{{ s.find('b') }}|{{ s | length }}", {{"s", "añbç"}}),
            "ñ|çbña|ñb|çbña|2|4");
  EXPECT_EQ(render("{{ ' x \u3000y\u00a0'.split() }}|{{ '\u3000'.isspace() }}|{{ 'ñ'.isalpha() }}"), "['x', 'y']|True|True");
  // Python's case operations with full Unicode mappings, final sigma and Python's title/capitalize
  // rules, and Jinja2's own title filter (words after '-', whitespace or brackets only). Expected
  // strings rendered by Jinja2 3.1 on Python 3.11.
  EXPECT_EQ(render("{{ 'Straße'|upper }}|{{ 'ΟΔΟΣ ΟΔΟΣ.'|lower }}|{{ 'İ'|lower|length }}|{{ 'ﬁ'|upper }}"), "STRASSE|οδος οδος.|2|FI");
  EXPECT_EQ(render("{{ \"ǆemal o'neil-x\"|title }}|{{ \"ǆemal o'neil-x\".title() }}|{{ 'ǆEMAL'|capitalize }}"),
            "Ǆemal O'neil-X|ǅemal O'Neil-X|ǅemal");
  EXPECT_EQ(render("{{ 'ΑΣ'|title }}{{ 'ΑΣ'.title() }}|{{ 'ß' is lower }}{{ '123' is lower }}{{ 'ǅ' is upper }}{{ 'ÀB1'.isupper() }}"),
            "ΑσΑς|TrueFalseFalseTrue");
  EXPECT_EQ(render("{{ ['b', 'Ä', 'a', 'ä']|sort|join }}"), "abÄä");
  // select / reject with a test (Qwen3-Coder's template: keys() | reject("in", handled_keys)), the order tests.
  EXPECT_EQ(render("{{ p.keys() | reject('in', ['type', 'description']) | list }}|{{ xs | select('odd') | list }}|{{ xs | select | list }}|"
                   "{{ xs | select('gt', 1) | list }}|{{ xs | reject('lt', 2) | list }}|{{ 3 is lessthan 2 }}",
                   {{"p", ojson::parse(R"({"type": "object", "description": "D", "properties": {}, "extra": 1})")}, {"xs", {3, 1, 0, 2, 5}}}),
            "['properties', 'extra']|[3, 1, 5]|[3, 1, 2, 5]|[3, 2, 5]|[3, 2, 5]|False");
  // sort and dictsort as Jinja2's (strings lower-cased unless case_sensitive), rsplit / rfind / index as Python's.
  EXPECT_EQ(render("{{ ws | sort }}|{{ ws | sort(case_sensitive=true) }}|{{ xs | sort(true) }}|{{ ms | sort(attribute='k') | map(attribute='n') | join }}|"
                   "{{ (d | dictsort(by='value'))[0][0] }}|{{ (d | dictsort)[1][0] }}",
                   {{"ws", {"b", "A", "a", "C"}}, {"xs", {3, 1, 2}}, {"ms", ojson::parse(R"([{"k": 2, "n": "x"}, {"k": 1, "n": "y"}])")},
                    {"d", ojson::parse(R"({"b": 2, "A": 1, "c": 0, "a": 5})")}}),
            "['A', 'a', 'b', 'C']|['A', 'C', 'a', 'b']|[3, 2, 1]|yx|c|a");
  EXPECT_EQ(render("{{ s.rsplit(none, 2) }}|{{ 'a,b,c,d'.rsplit(',', 2) }}|{{ 'x  '.rsplit(none, 1) }}|{{ 'héllo'.rfind('l') }}|{{ 'héllo'.index('l') }}",
                   {{"s", "  a b\u3000c  d  "}}),
            "['  a b', 'c', 'd']|['a,b', 'c', 'd']|['x']|3|2");
  EXPECT_EQ(render("{{ ws | unique | list }}|{{ ws | unique(true) | list }}", {{"ws", ojson::parse(R"(["b", "A", "a", "B", 1, 1.0])")}}),
            "['b', 'A', 1]|['b', 'A', 'a', 'B', 1]");
  // Jinja2's precedence and Python's chained comparisons.
  EXPECT_EQ(render("{{ 2 ** 3 ** 2 }}|{{ -2 ** 2 }}|{{ 2 * 3 ** 2 }}|{{ -1 | abs }}|{{ 1 < 2 < 3 }}|{{ 3 > 2 > 2 }}|{{ 0 < xs | length < 3 }}",
                   {{"xs", {5, 6}}}),
            "64|4|18|1|True|False|True");
  // transformers' tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False), as json.dumps
  // writes it (0x7f raw unless ensure_ascii).
  const ojson d = ojson::parse(R"({"b": 2, "a": [1, {"z": "\u00e9\ud83d\ude00\u007f"}], "c": null})");
  EXPECT_EQ(render("{{ d | tojson(separators=(',', ':')) }}|{{ d | tojson(sort_keys=true) }}", {{"d", d}}),
            "{\"b\":2,\"a\":[1,{\"z\":\"\u00e9\U0001F600\x7f\"}],\"c\":null}|{\"a\": [1, {\"z\": \"\u00e9\U0001F600\x7f\"}], \"b\": 2, \"c\": null}");
  EXPECT_EQ(render("{{ d | tojson(true) }}", {{"d", d}}), "{\"b\": 2, \"a\": [1, {\"z\": \"\\u00e9\\ud83d\\ude00\\u007f\"}], \"c\": null}");
  EXPECT_EQ(render("{{ d | tojson(indent=1, separators=(',', '=')) }}", {{"d", ojson::parse(R"({"k": [1]})")}}), "{\n \"k\"=[\n  1\n ]\n}");
  EXPECT_EQ(render("{{ d | tojson }}|{{ d | tojson(indent=2) }}", {{"d", {{"b", 1}, {"a", {true, nullptr, 1.5, "é\"q"}}}}}),
            "{\"b\": 1, \"a\": [true, null, 1.5, \"é\\\"q\"]}|{\n  \"b\": 1,\n  \"a\": [\n    true,\n    null,\n    1.5,\n    \"é\\\"q\"\n  ]\n}");
  EXPECT_EQ(render("{{ xs | length }}|{{ xs | selectattr('on') | map(attribute='n') | join(',') }}|{{ '  t ' | trim }}",
                   {{"xs", {{{"n", "a"}, {"on", true}}, {{"n", "b"}, {"on", false}}, {{"n", "c"}, {"on", true}}}}}),
            "3|a,c|t");
  EXPECT_EQ(render("{{ x is defined }}|{{ y is not defined }}|{{ none is none }}|{{ 'a' is string }}|{{ false is false }}",
                   {{"x", 1}}),
            "True|True|True|True|True");
  EXPECT_EQ(render("{{ 'yes' if x else 'no' }}|{{ x.missing is defined }}", {{"x", ojson::object()}}), "no|False");
}

// Filters and forms real templates may use beyond the common ones; expected strings rendered by Jinja2
// 3.1 (tests/chat/chat_vs_jinja2.py keeps the common ones honest on whole conversations).
TEST(Jinja, MoreFiltersAndFormsAsJinja2) {
  EXPECT_EQ(render(R"({{ '%s-%r-%d-%5.2f-%x-%#o-%c-%%' | format('a', 'b', 3.9, 3.14159, 255, 8, 65) }}|{{ '%(a)s %(b)03d' | format(a='x', b=7) }})"),
            "a-'b'-3- 3.14-ff-0o10-A-%|x 007");
  EXPECT_EQ(render(R"({{ 2.675 | round(2) }}|{{ 2.5 | round }}|{{ 3 | round }}|{{ 3.14159 | round(1, 'ceil') }}|{{ [3, 1, 2] | max }}|{{ ['b', 'A'] | min }}|{{ [1, 2.5] | sum }})"),
            "2.67|2.0|3|3.2|3|A|3.5");
  EXPECT_EQ(render(R"({{ 'hi' | center(7) }}|{{ 'The quick brown fox jumps' | truncate(12) }}|{{ [1, 2, 3] | batch(2, 0) | list }}|{{ [1, 2, 3] | slice(2) | list }})"),
            "   hi  |The...|[[1, 2], [3, 0]]|[[1, 2], [3]]");
  EXPECT_EQ(render(R"({{ (1,) }}|{{ {'a': 1}.items() | list }}|{{ [0] * 3 }}|{{ 'x' is in ['x'] }}|{{ '<a>' | e }}|{{ 1536 | filesizeformat(true) }})"),
            "(1,)|[('a', 1)]|[0, 0, 0]|True|&lt;a&gt;|1.5 KiB");
  // Python's str.splitlines in indent; \w+ words; Python's string escapes; a tag closes outside strings
  // and brackets; dotted attribute paths.
  EXPECT_EQ(render(R"({{ 'a\r\nb\n\nc' | indent(2) }}|{{ 'x-1 y_2, z' | wordcount }}|{{ '\x41\u00e9\101' }}|{{ {'a': {'b': 1}} }}|{{ '}}' }}|{{ [{'a': [5, 6]}] | map(attribute='a.1') | list }})"),
            "a\n  b\n\n  c|4|AéA|{'a': {'b': 1}}|}}|[6]");
}

TEST(Jinja, StatementsLoopsNamespacesMacros) {
  EXPECT_EQ(render("{% for x in xs %}{{ loop.index }}{{ x }}{% if not loop.last %},{% endif %}{% endfor %}", {{"xs", {"a", "b"}}}),
            "1a,2b");
  EXPECT_EQ(render("{% set ns = namespace(n=0) %}{% for x in xs %}{% set ns.n = ns.n + x %}{% endfor %}{{ ns.n }}",
                   {{"xs", {1, 2, 3}}}),
            "6");
  // A plain set inside a loop does not leak out of it.
  EXPECT_EQ(render("{% set n = 0 %}{% for x in xs %}{% set n = x %}{% endfor %}{{ n }}", {{"xs", {1, 2}}}), "0");
  EXPECT_EQ(render("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}", {{"d", {{"a", 1}, {"b", 2}}}}), "a=1;b=2;");
  EXPECT_EQ(render("{% for x in xs if x > 1 %}{{ x }}{% else %}none{% endfor %}", {{"xs", {1, 2, 3}}}), "23");
  EXPECT_EQ(render("{% for x in xs %}{% if x == 2 %}{% break %}{% endif %}{{ x }}{% endfor %}", {{"xs", {1, 2, 3}}}), "1");
  EXPECT_EQ(render("{% macro greet(name, p='Hi') %}{{ p }} {{ name }}{% endmacro %}{{ greet('A') }}/{{ greet('B', p='Yo') }}"),
            "Hi A/Yo B");
  EXPECT_EQ(render("{% if a %}A{% elif b %}B{% else %}C{% endif %}", {{"a", false}, {"b", true}}), "B");
  EXPECT_EQ(render("{% set t %}in{{ 1 }}{% endset %}[{{ t }}]"), "[in1]");
  EXPECT_EQ(render("{% raw %}{{ not rendered }}{% endraw %}"), "{{ not rendered }}");
}

TEST(Jinja, WhitespaceControlAsTransformers) {
  // trim_blocks: newline after a block tag goes; lstrip_blocks: indentation before a block tag goes.
  EXPECT_EQ(render("{% if true %}\n  x\n  {% endif %}\ny"), "  x\ny");
  EXPECT_EQ(render("a  {%- if true -%}  b  {%- endif %}"), "ab");
  EXPECT_EQ(render("a\n    {{- 'b' }}"), "ab");
  EXPECT_EQ(render("{# comment #}\nx"), "x");
  EXPECT_EQ(render("  {%+ if true %}x{% endif %}"), "  x");
}

TEST(Jinja, ErrorsAreClear) {
  auto err = [](const std::string& src, const std::string& needle, const ojson& vars = ojson::object()) {
    try {
      render(src, vars);
      ADD_FAILURE() << "no error for " << src;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  err("{{ raise_exception('Only user and assistant roles') }}", "Only user and assistant roles");
  err("{% if x %}", "missing 'endif'");
  err("{{ x | nosuchfilter }}", "unknown filter 'nosuchfilter'");
  err("{% include 'x' %}", "unsupported statement 'include'");
  err("{{ 'a' + 1 }}", "unsupported operand types");
  err("{{ x.y.z }}", "undefined value");
  err("{{ (1 }}", "expected ')'");
  err("{% for x in none %}{% endfor %}", "cannot iterate over None");
}

TEST(ChatTemplate, ToolCallArgumentsAreParsed) {
  ojson msgs = ojson::parse(R"([{"role": "assistant", "content": "",
    "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{\"city\": \"Paris\", \"n\": 2}"}}]}])");
  ojson parsed = parse_tool_call_arguments(msgs);
  EXPECT_TRUE(parsed[0]["tool_calls"][0]["function"]["arguments"].is_object());
  EXPECT_EQ(parsed[0]["tool_calls"][0]["function"]["arguments"].dump(), R"({"city":"Paris","n":2})");  // order kept
  ChatTemplate t("{{ messages[0].tool_calls[0].function.arguments | tojson }}", ojson::object());
  EXPECT_EQ(t.render(parsed), R"({"city": "Paris", "n": 2})");
}

TEST(ChatTemplate, ChatMLFallback) {
  ChatTemplate t(ChatTemplate::chatml(), ojson::object());
  EXPECT_EQ(t.render(ojson::parse(R"([{"role": "user", "content": "hi"}])")),
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
}

// continue_final_message (vLLM, transformers): the prompt stops right after the final message's
// content, which the model then continues; the text before it is the ordinary rendering's.
TEST(ChatTemplate, ContinueFinalMessage) {
  auto model_template = [](const std::string& model) {
    const ojson cfg = ojson::parse(slurp(kFix + "/models/" + model + "/tokenizer_config.json"));
    ojson special = ojson::object();
    for (const char* k : {"bos_token", "eos_token"})
      if (cfg.contains(k) && cfg[k].is_string()) special[k] = cfg[k];
    return ChatTemplate(cfg["chat_template"].get<std::string>(), special);
  };
  const ChatTemplate qwen = model_template("tiny-qwen2");
  const ojson msgs = ojson::parse(R"([{"role": "user", "content": "Capital of France?"},
                                      {"role": "assistant", "content": "The capital is"}])");
  const ChatRenderOptions o = chat_render_options(ojson::parse(R"({"continue_final_message": true})"));
  EXPECT_FALSE(o.add_generation_prompt);  // vLLM's default when continuing
  const std::string got = qwen.render(msgs, o);
  EXPECT_EQ(got, "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
                 "<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\nThe capital is");
  ChatRenderOptions closed;
  closed.add_generation_prompt = false;
  EXPECT_EQ(qwen.render(msgs, closed).rfind(got, 0), 0u);  // a prefix of the closed turn
  // A template that trims contents: the trimmed text is found and kept.
  const ChatTemplate llama = model_template("tiny-llama3");
  const ojson trailing = ojson::parse(R"([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sure, "}])");
  const std::string l = llama.render(trailing, o);
  EXPECT_EQ(l.substr(l.size() - 5), "Sure,") << l;
  EXPECT_EQ(llama.render(trailing, closed).rfind(l, 0), 0u);
  // transformers' rules, what apply_chat_template gives (its code run on these messages): the cut is
  // at the last place the stripped text appears, not the last place the text as given does (" Hello!"
  // appears in the user's message, where this cut used to fall, and nowhere else: the template trims
  // the final one); the trailing whitespace stays only where the message has none in front.
  auto ends_with = [](const std::string& s, const std::string& end) {
    return s.size() >= end.size() && s.compare(s.size() - end.size(), end.size(), end) == 0;
  };
  const ojson twice = ojson::parse(R"([{"role": "user", "content": "Say Hello!"}, {"role": "assistant", "content": "Hello!"},
                                       {"role": "user", "content": "again"}, {"role": "assistant", "content": " Hello!"}])");
  const std::string hello = llama.render(twice, o);
  EXPECT_TRUE(ends_with(hello, "again<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello!")) << hello;
  EXPECT_EQ(llama.render(twice, closed).rfind(hello, 0), 0u);
  const std::string spaced = qwen.render(ojson::parse(R"([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  spaced  "}])"), o);
  EXPECT_TRUE(ends_with(spaced, "<|im_start|>assistant\n  spaced")) << spaced;
  EXPECT_TRUE(ends_with(qwen.render(trailing, o), "<|im_start|>assistant\nSure, "));
  // Errors: with a generation prompt, no text to continue, a wrong type.
  EXPECT_THROW(chat_render_options(ojson::parse(R"({"continue_final_message": true, "add_generation_prompt": true})")),
               Error);
  ChatRenderOptions both = o;
  both.add_generation_prompt = true;
  EXPECT_THROW(qwen.render(msgs, both), Error);
  EXPECT_THROW(qwen.render(ojson::parse(R"([{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}])"), o),
               Error);
  EXPECT_THROW(chat_render_options(ojson::parse(R"({"continue_final_message": "yes"})")), Error);
}

// 'tools' as vLLM's request schema takes them: function tools with a named function (type defaulting to
// "function", parameters an object when given); anything else is refused before any template sees it.
TEST(ChatTemplate, ToolsMustBeNamedFunctions) {
  const auto opts = [](const char* tools) { return chat_render_options(ojson::parse(std::string(R"({"tools": )") + tools + "}")); };
  EXPECT_EQ(opts(R"([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}},
                     {"function": {"name": "g"}}])").tools.size(), 2u);
  EXPECT_NO_THROW(opts(R"([{"function": {"name": "h", "parameters": null}}])"));
  for (const char* bad : {R"({"type": "function"})", R"([{"type": "function"}])", R"([{"type": "retrieval", "function": {"name": "f"}}])",
                          R"([{"function": {"name": 5}}])", R"([{"function": "f"}])", R"([5])",
                          R"([{"function": {"name": "f", "parameters": "x"}}])"})
    EXPECT_THROW(opts(bad), Error) << bad;
}

// A chat template sent with the request, directly or among the template's keyword arguments, is refused
// (vLLM's default); other keyword arguments pass through to the template.
TEST(ChatTemplate, RequestTemplatesAreRefused) {
  EXPECT_THROW(chat_render_options(ojson::parse(R"({"chat_template": "{{ 'x' }}"})")), Error);
  EXPECT_THROW(chat_render_options(ojson::parse(R"({"chat_template_kwargs": {"chat_template": "{{ 'x' }}"}})")), Error);
  EXPECT_EQ(chat_render_options(ojson::parse(R"({"chat_template": null, "chat_template_kwargs": {"enable_thinking": false}})"))
                .template_kwargs["enable_thinking"], false);
}

// vLLM's --chat-template: a file's text, else an inline template (it has '{', '}' or a newline) with
// its backslash escapes decoded; a value that looks like a path and does not open is an error.
TEST(ChatTemplateOption, FileOrInlineTemplate) {
  const std::string path = ::testing::TempDir() + "/llmserve-chat-template.jinja";
  {
    std::ofstream f(path);
    f << "{% for m in messages %}{{ m['content'] }}{% endfor %}\n";
  }
  EXPECT_EQ(load_chat_template(path), "{% for m in messages %}{{ m['content'] }}{% endfor %}\n");
  EXPECT_EQ(load_chat_template("{{ messages[0]['content'] }}\\n\\t\\\\x\\q"), "{{ messages[0]['content'] }}\n\t\\x\\q");
  try {
    load_chat_template("/nonexistent/template.jinja");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("looks like a file path, but it cannot be opened"), std::string::npos) << e.what();
  }
  EXPECT_THROW(load_chat_template(::testing::TempDir()), Error);  // a directory: nothing to read
  ChatTemplate t(load_chat_template("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\\n{% endfor %}"), {});
  EXPECT_EQ(t.render(nlohmann::ordered_json::parse(R"([{"role": "user", "content": "hi"}])")), "user: hi\n");
  std::remove(path.c_str());
}

// vLLM's default_chat_template_kwargs: the template's keyword arguments for every request, each one a
// request's chat_template_kwargs names taking the request's value (Qwen3's enable_thinking, say).
TEST(ChatTemplate, DefaultTemplateKwargsUnderTheRequests) {
  const ChatTemplate t("{% if enable_thinking is defined and not enable_thinking %}[no-think]{% endif %}{{ tone }}"
                       "{% for m in messages %}{{ m['content'] }}{% endfor %}",
                       ojson::object());
  const ojson msgs = ojson::parse(R"([{"role": "user", "content": "hi"}])");
  const ojson defaults = ojson::parse(R"({"enable_thinking": false, "tone": "calm:"})");
  EXPECT_EQ(t.render(msgs, chat_render_options(ojson::object(), false, defaults)), "[no-think]calm:hi");
  EXPECT_EQ(t.render(msgs, chat_render_options(ojson::parse(R"({"chat_template_kwargs": {"enable_thinking": true}})"), false, defaults)),
            "calm:hi");
  EXPECT_EQ(t.render(msgs, chat_render_options(ojson::parse(R"({"chat_template_kwargs": {"tone": "loud:"}})"), false, defaults)),
            "[no-think]loud:hi");
  EXPECT_EQ(t.render(msgs, chat_render_options(ojson::object())), "hi");
}
