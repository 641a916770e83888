#include "data/pretokenize.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "runtime/error.h"

namespace kiln {

namespace {

// GPT-2's pattern with \s widened to Unicode White_Space (see the header).
constexpr const char* kPattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\x{85}\\p{L}\\p{N}]+"
    "|[\\s\\x{85}]+(?![^\\s\\x{85}])|[\\s\\x{85}]+";

}  // namespace

struct PreTokenizer::Impl {
  pcre2_code* code = nullptr;
};

PreTokenizer::PreTokenizer() : impl_(std::make_unique<Impl>()) {
  int err = 0;
  PCRE2_SIZE err_off = 0;
  impl_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(kPattern), PCRE2_ZERO_TERMINATED,
                              PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &err_off, nullptr);
  if (!impl_->code) {
    PCRE2_UCHAR buf[256];
    pcre2_get_error_message(err, buf, sizeof(buf));
    KILN_CHECK(false, "PCRE2 rejected the pre-tokenizer pattern at offset " << err_off << ": "
                                                                            << reinterpret_cast<char*>(buf));
  }
  // JIT is ~10x faster than the interpreter here; without JIT support
  // pcre2_match interprets, with the same results.
  pcre2_jit_compile(impl_->code, PCRE2_JIT_COMPLETE);
}

PreTokenizer::~PreTokenizer() {
  if (impl_ && impl_->code) pcre2_code_free(impl_->code);
}

const char* PreTokenizer::pattern() { return kPattern; }

std::vector<std::string> PreTokenizer::split_to_vector(std::string_view text) const {
  std::vector<std::string> out;
  split(text, [&](std::string_view p) { out.emplace_back(p); });
  return out;
}

PreTokenizer::Cursor::Cursor(const PreTokenizer& p, std::string_view text) : p_(p), text_(text) {
  match_data_ = pcre2_match_data_create_from_pattern(p_.impl_->code, nullptr);
  KILN_CHECK(match_data_ != nullptr, "out of memory creating PCRE2 match data");
}

PreTokenizer::Cursor::~Cursor() { pcre2_match_data_free(static_cast<pcre2_match_data*>(match_data_)); }

bool PreTokenizer::Cursor::next(std::string_view* piece) {
  if (!have_match_ && !done_ && pos_ < text_.size()) {
    auto* md = static_cast<pcre2_match_data*>(match_data_);
    const int rc = pcre2_match(p_.impl_->code, reinterpret_cast<PCRE2_SPTR>(text_.data()), text_.size(), pos_,
                               0, md, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) {
      done_ = true;
    } else if (rc < 0) {
      PCRE2_UCHAR buf[256];
      pcre2_get_error_message(rc, buf, sizeof(buf));
      KILN_CHECK(false, "PCRE2 match failed at byte " << pos_ << ": " << reinterpret_cast<char*>(buf));
    } else {
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      match_start_ = ov[0];
      match_end_ = ov[1];
      // Every alternative consumes at least one character, so a match is
      // never empty and the loop always advances.
      KILN_CHECK(match_end_ > match_start_ && match_start_ >= pos_, "empty pre-tokenizer match at " << pos_);
      have_match_ = true;
    }
  }
  if (pos_ >= text_.size()) return false;
  if (!have_match_) {  // no further match: the tail is one gap piece
    *piece = text_.substr(pos_);
    pos_ = text_.size();
    return true;
  }
  if (match_start_ > pos_) {  // bytes no match covers (invalid UTF-8) come first
    *piece = text_.substr(pos_, match_start_ - pos_);
    pos_ = match_start_;
    return true;
  }
  *piece = text_.substr(match_start_, match_end_ - match_start_);
  pos_ = match_end_;
  have_match_ = false;
  return true;
}

}  // namespace kiln
