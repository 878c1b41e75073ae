#include "chat/jinja_value.h"

#include <algorithm>
#include <charconv>
#include <cmath>

#include "common/error.h"
#include "tokenizer/unicode.h"

namespace llmserve::jinja {

Value Value::from_json(const nlohmann::ordered_json& j) {
  switch (j.type()) {
    case nlohmann::json::value_t::null: return none();
    case nlohmann::json::value_t::boolean: return Value(j.get<bool>());
    case nlohmann::json::value_t::number_integer:
    case nlohmann::json::value_t::number_unsigned: return Value(j.get<int64_t>());
    case nlohmann::json::value_t::number_float: return Value(j.get<double>());
    case nlohmann::json::value_t::string: return Value(j.get<std::string>());
    case nlohmann::json::value_t::array: {
      List l;
      for (const auto& x : j) l.push_back(from_json(x));
      return Value(std::move(l));
    }
    case nlohmann::json::value_t::object: {
      Dict d;
      for (auto it = j.begin(); it != j.end(); ++it) d.emplace_back(it.key(), from_json(it.value()));
      return Value(std::move(d));
    }
    default: return Value();
  }
}

bool Value::truthy() const {
  switch (type_) {
    case Type::Undefined: case Type::None: return false;
    case Type::Bool: return b_;
    case Type::Int: return i_ != 0;
    case Type::Float: return f_ != 0;
    case Type::String: return !s_->empty();
    case Type::List: return !l_->empty();
    case Type::Dict: return !d_->empty();
    case Type::Function: return true;
  }
  return false;
}

Value Value::get(const std::string& key) const {
  if (type_ != Type::Dict) return Value();
  for (const auto& [k, v] : *d_)
    if (k == key) return v;
  return Value();
}

void Value::set(const std::string& key, Value v) {
  for (auto& [k, x] : *d_)
    if (k == key) {
      x = std::move(v);
      return;
    }
  d_->emplace_back(key, std::move(v));
}

std::string python_float(double f) {
  if (std::isnan(f)) return "nan";
  if (std::isinf(f)) return f > 0 ? "inf" : "-inf";
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, f);
  std::string s(buf, r.ptr);
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
  // Python writes 1e+20 as 1e+20 and 1e-05 with two exponent digits.
  auto e = s.find('e');
  if (e != std::string::npos) {
    std::string mant = s.substr(0, e), ex = s.substr(e + 1);
    std::string sign = "+";
    if (ex[0] == '-' || ex[0] == '+') {
      sign = ex[0] == '-' ? "-" : "+";
      ex = ex.substr(1);
    }
    if (ex.size() < 2) ex = "0" + ex;
    s = mant + "e" + sign + ex;
  }
  return s;
}

namespace {
std::string py_str_repr(const std::string& s) {
  const bool has_single = s.find('\'') != std::string::npos, has_double = s.find('"') != std::string::npos;
  const char q = has_single && !has_double ? '"' : '\'';
  std::string out(1, q);
  for (unsigned char c : s) {
    if (c == static_cast<unsigned char>(q) || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f) {
      char b[8];
      std::snprintf(b, sizeof b, "\\x%02x", c);
      out += b;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + q;
}

// A JSON string as Python's json.dumps writes it: ensure_ascii=False escapes only '"', '\\' and the
// controls below 0x20; ensure_ascii=True also every code point from 0x7f as \\uXXXX (surrogate pairs
// above 0xFFFF).
std::string json_string(const std::string& s, bool ensure_ascii) {
  std::string out = "\"";
  auto u = [&](unsigned v) {
    char b[16];
    std::snprintf(b, sizeof b, "\\u%04x", v);
    out += b;
  };
  for (size_t i = 0; i < s.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20 || (ensure_ascii && c == 0x7f)) {
          u(c);
        } else if (ensure_ascii && c >= 0x80) {
          size_t n;
          const char32_t cp = unicode::utf8_at(s, i, n);
          if (cp > 0xFFFF) {
            u(0xD800 + ((cp - 0x10000) >> 10));
            u(0xDC00 + ((cp - 0x10000) & 0x3FF));
          } else {
            u(cp);
          }
          i += n - 1;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}
}  // namespace

std::string Value::to_string() const {
  switch (type_) {
    case Type::Undefined: return "";
    case Type::String: return *s_;
    default: return repr();
  }
}

std::string Value::repr() const {
  switch (type_) {
    case Type::Undefined: return "";
    case Type::None: return "None";
    case Type::Bool: return b_ ? "True" : "False";
    case Type::Int: return std::to_string(i_);
    case Type::Float: return python_float(f_);
    case Type::String: return py_str_repr(*s_);
    case Type::List: {
      std::string s = tuple_ ? "(" : "[";
      for (size_t i = 0; i < l_->size(); ++i) s += (i ? ", " : "") + (*l_)[i].repr();
      if (tuple_) return s + (l_->size() == 1 ? ",)" : ")");
      return s + "]";
    }
    case Type::Dict: {
      std::string s = "{";
      for (size_t i = 0; i < d_->size(); ++i) s += (i ? ", " : "") + py_str_repr((*d_)[i].first) + ": " + (*d_)[i].second.repr();
      return s + "}";
    }
    case Type::Function: return "<function>";
  }
  return "";
}

std::string Value::to_json(const JsonFormat& f, int depth) const {
  auto nl = [&](int d) {  // (a newline, then the indent: built in place, not as "\n" + string, which GCC 12 warns on)
    if (f.indent < 0) return std::string();
    std::string s(1 + static_cast<size_t>(f.indent * d), ' ');
    s[0] = '\n';
    return s;
  };
  const std::string item_sep = f.item_sep ? *f.item_sep : f.indent < 0 ? ", " : ",";
  const std::string key_sep = f.key_sep ? *f.key_sep : ": ";
  switch (type_) {
    case Type::Undefined: throw Error("tojson: value is undefined");
    case Type::None: return "null";
    case Type::Bool: return b_ ? "true" : "false";
    case Type::Int: return std::to_string(i_);
    case Type::Float:
      if (std::isnan(f_)) return "NaN";
      if (std::isinf(f_)) return f_ > 0 ? "Infinity" : "-Infinity";
      return python_float(f_);
    case Type::String: return json_string(*s_, f.ensure_ascii);
    case Type::List: {
      if (l_->empty()) return "[]";
      std::string s = "[";
      for (size_t i = 0; i < l_->size(); ++i) s += (i ? item_sep : "") + nl(depth + 1) + (*l_)[i].to_json(f, depth + 1);
      return s + nl(depth) + "]";
    }
    case Type::Dict: {
      if (d_->empty()) return "{}";
      std::vector<size_t> order(d_->size());
      for (size_t i = 0; i < order.size(); ++i) order[i] = i;
      if (f.sort_keys)  // (UTF-8 byte order is code point order, Python's)
        std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return (*d_)[a].first < (*d_)[b].first; });
      std::string s = "{";
      for (size_t i = 0; i < order.size(); ++i) {
        const auto& [k, v] = (*d_)[order[i]];
        s += (i ? item_sep : "") + nl(depth + 1) + json_string(k, f.ensure_ascii) + key_sep + v.to_json(f, depth + 1);
      }
      return s + nl(depth) + "}";
    }
    case Type::Function: throw Error("tojson: cannot serialize a function");
  }
  return "";
}

std::string Value::type_name() const {
  static const char* names[] = {"undefined", "none", "bool", "int", "float", "string", "list", "dict", "function"};
  return names[static_cast<int>(type_)];
}

bool Value::operator==(const Value& o) const {
  if (is_number() && o.is_number()) {
    if (type_ == Type::Int && o.type_ == Type::Int) return i_ == o.i_;
    return as_float() == o.as_float();
  }
  if ((type_ == Type::Bool && o.is_number()) || (is_number() && o.type_ == Type::Bool))
    return (type_ == Type::Bool ? (b_ ? 1.0 : 0.0) : as_float()) == (o.type_ == Type::Bool ? (o.b_ ? 1.0 : 0.0) : o.as_float());
  if (type_ != o.type_) return false;
  switch (type_) {
    case Type::Undefined: case Type::None: return true;
    case Type::Bool: return b_ == o.b_;
    case Type::String: return *s_ == *o.s_;
    case Type::List: return tuple_ == o.tuple_ && *l_ == *o.l_;
    case Type::Dict: {
      if (d_->size() != o.d_->size()) return false;
      for (const auto& [k, v] : *d_)
        if (!(o.get(k) == v) || o.get(k).is_undefined()) return false;
      return true;
    }
    default: return fn_ == o.fn_;
  }
}

Value Args::get(size_t i, const std::string& name, Value def) const {
  if (i < pos.size()) return pos[i];
  for (const auto& [k, v] : kw)
    if (k == name) return v;
  return def;
}

}  // namespace llmserve::jinja
