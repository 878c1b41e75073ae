// Values of the Jinja engine, with Python's semantics (what transformers' jinja2 rendering sees):
// none, bool, int, float, string, list, dict (insertion-ordered), callables, and undefined.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace llmserve::jinja {

// What json.dumps takes: ensure_ascii (false in transformers' tojson), indent, separators (Python's
// defaults for the indent unless given), sort_keys.
struct JsonFormat {
  int indent = -1;  // -1: none (one line)
  std::optional<std::string> item_sep, key_sep;
  bool sort_keys = false;
  bool ensure_ascii = false;
};

class Value;
using List = std::vector<Value>;
using Dict = std::vector<std::pair<std::string, Value>>;
struct Args;
using Function = std::function<Value(Args&)>;

class Value {
 public:
  enum class Type { Undefined, None, Bool, Int, Float, String, List, Dict, Function };

  Value() = default;  // undefined
  static Value none() { Value v; v.type_ = Type::None; return v; }
  Value(bool b) : type_(Type::Bool), b_(b) {}
  Value(int64_t i) : type_(Type::Int), i_(i) {}
  Value(int i) : type_(Type::Int), i_(i) {}
  Value(double f) : type_(Type::Float), f_(f) {}
  Value(std::string s) : type_(Type::String), s_(std::make_shared<std::string>(std::move(s))) {}
  Value(const char* s) : Value(std::string(s)) {}
  Value(List l) : type_(Type::List), l_(std::make_shared<List>(std::move(l))) {}
  // A tuple: a list that prints as Python prints a tuple, "(1, 2)", and equals only tuples (dict.items()
  // pairs, dictsort's, tuple literals).
  static Value tuple(List l) { Value v(std::move(l)); v.tuple_ = true; return v; }
  Value(Dict d) : type_(Type::Dict), d_(std::make_shared<Dict>(std::move(d))) {}
  Value(Function f) : type_(Type::Function), fn_(std::make_shared<Function>(std::move(f))) {}
  static Value from_json(const nlohmann::ordered_json& j);

  Type type() const { return type_; }
  bool is_undefined() const { return type_ == Type::Undefined; }
  bool is_none() const { return type_ == Type::None; }
  bool is_string() const { return type_ == Type::String; }
  bool is_number() const { return type_ == Type::Int || type_ == Type::Float; }
  bool is_list() const { return type_ == Type::List; }
  bool is_tuple() const { return type_ == Type::List && tuple_; }
  bool is_dict() const { return type_ == Type::Dict; }
  bool is_callable() const { return type_ == Type::Function; }

  bool as_bool() const { return b_; }
  int64_t as_int() const { return type_ == Type::Float ? static_cast<int64_t>(f_) : i_; }
  double as_float() const { return type_ == Type::Int ? static_cast<double>(i_) : f_; }
  const std::string& str() const { return *s_; }
  List& list() const { return *l_; }
  Dict& dict() const { return *d_; }
  const Function& fn() const { return *fn_; }

  // Python truthiness.
  bool truthy() const;
  // Dict lookup (undefined when missing).
  Value get(const std::string& key) const;
  void set(const std::string& key, Value v);
  // str(x) as Python prints it ({{ x }}); repr(x) inside containers.
  std::string to_string() const;
  std::string repr() const;
  // json.dumps(x, ensure_ascii, indent, separators, sort_keys), as transformers' tojson filter takes them.
  std::string to_json(const JsonFormat& f = JsonFormat(), int depth = 0) const;
  std::string type_name() const;
  bool operator==(const Value& o) const;

 private:
  Type type_ = Type::Undefined;
  bool b_ = false;
  bool tuple_ = false;  // (a List)
  int64_t i_ = 0;
  double f_ = 0;
  std::shared_ptr<std::string> s_;
  std::shared_ptr<List> l_;
  std::shared_ptr<Dict> d_;
  std::shared_ptr<Function> fn_;
};

// Arguments of a call: positional and keyword.
struct Args {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
  // Positional i or keyword `name`, else `def`.
  Value get(size_t i, const std::string& name, Value def = Value()) const;
};

std::string python_float(double f);

}  // namespace llmserve::jinja
