// The few protobuf facts the native front needs, read and written by hand (no generated code):
// a ModelInferRequest's model name (field 1), and meshserve.stream.v1's CallBatch and
// ReplyBatch frames (protos/meshserve_stream.proto; protos/stream_frames.py writes them the
// same way in Python).
#pragma once

#include <grpcpp/support/slice.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace meshserve {

using Headers = std::vector<std::pair<std::string, std::string>>;

class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  bool done() const { return at_ >= size_; }
  size_t at() const { return at_; }

  bool Varint(uint64_t* value) {
    *value = 0;
    for (int shift = 0; shift < 64 && at_ < size_; shift += 7) {
      uint8_t byte = data_[at_++];
      *value |= static_cast<uint64_t>(byte & 0x7f) << shift;
      if (!(byte & 0x80)) return true;
    }
    return false;
  }

  // One field: its number and wire type; for a length-delimited one, where its bytes are.
  bool Field(uint64_t* number, uint64_t* wire, uint64_t* value, size_t* offset) {
    uint64_t tag;
    if (!Varint(&tag)) return false;
    *number = tag >> 3;
    *wire = tag & 7;
    switch (*wire) {
      case 0:
        return Varint(value);
      case 1:
        return Skip(8);
      case 5:
        return Skip(4);
      case 2:
        if (!Varint(value) || *value > size_ - at_) return false;
        *offset = at_;
        at_ += *value;
        return true;
      default:
        return false;
    }
  }

 private:
  bool Skip(size_t n) {
    if (size_ - at_ < n) return false;
    at_ += n;
    return true;
  }

  const uint8_t* data_;
  size_t size_;
  size_t at_ = 0;
};

// Field 1 (model_name) of a serialized ModelInferRequest (the last one, as protobuf merges);
// false when the bytes are not a well-formed message (the Python router then says why).
inline bool ReadModelName(const uint8_t* data, size_t size, std::string* name) {
  Reader reader(data, size);
  bool found = false;
  while (!reader.done()) {
    uint64_t number, wire, value;
    size_t offset = 0;
    if (!reader.Field(&number, &wire, &value, &offset)) return false;
    if (number == 1 && wire == 2) {
      name->assign(reinterpret_cast<const char*>(data + offset), value);
      found = true;
    }
  }
  return found;
}

inline void PutVarint(std::string* out, uint64_t value) {
  while (value >= 0x80) {
    out->push_back(static_cast<char>((value & 0x7f) | 0x80));
    value >>= 7;
  }
  out->push_back(static_cast<char>(value));
}

inline void PutBytes(std::string* out, uint8_t tag, const std::string& bytes) {
  out->push_back(static_cast<char>(tag));
  PutVarint(out, bytes.size());
  out->append(bytes);
}

inline bool IsBinaryHeader(const std::string& key) {
  return key.size() > 4 && key.compare(key.size() - 4, 4, "-bin") == 0;
}

// The `repeated Header metadata = 3` entries of a CallFrame.
inline std::string EncodeHeaders(const Headers& headers) {
  std::string out;
  for (const auto& [key, value] : headers) {
    std::string header;
    PutBytes(&header, 0x0a, key);
    PutBytes(&header, IsBinaryHeader(key) ? 0x1a : 0x12, value);
    PutBytes(&out, 0x1a, header);
  }
  return out;
}

// One CallFrame as a CallBatch entry: slices (head, the request's own slices, tail), so the
// request's bytes are never copied.
inline size_t AppendCallEntry(std::vector<grpc::Slice>* out, uint64_t id, const std::vector<grpc::Slice>& body,
                              const std::string& headers, uint64_t timeout_us) {
  size_t body_size = 0;
  for (const auto& slice : body) body_size += slice.size();
  std::string inner_head;
  inner_head.push_back(0x08);
  PutVarint(&inner_head, id);
  inner_head.push_back(0x12);
  PutVarint(&inner_head, body_size);
  std::string tail = headers;
  if (timeout_us > 0) {
    tail.push_back(0x20);
    PutVarint(&tail, timeout_us);
  }
  std::string head;
  head.push_back(0x0a);
  PutVarint(&head, inner_head.size() + body_size + tail.size());
  head += inner_head;
  size_t total = head.size() + body_size + tail.size();
  out->emplace_back(head);
  out->insert(out->end(), body.begin(), body.end());
  if (!tail.empty()) out->emplace_back(tail);
  return total;
}

// A cancel frame (id, cancel = true) as a CallBatch entry.
inline size_t AppendCancelEntry(std::vector<grpc::Slice>* out, uint64_t id) {
  std::string frame;
  frame.push_back(0x08);
  PutVarint(&frame, id);
  frame.push_back(0x28);
  frame.push_back(0x01);
  std::string entry;
  PutBytes(&entry, 0x0a, frame);
  out->emplace_back(entry);
  return entry.size();
}

struct ReplyFrame {
  uint64_t id = 0;
  size_t body_offset = 0, body_size = 0;  // within the batch
  int code = 0;
  std::string message;
  Headers trailing;
};

inline bool ParseHeader(const uint8_t* data, size_t size, std::pair<std::string, std::string>* header) {
  Reader reader(data, size);
  std::string value, binary;
  while (!reader.done()) {
    uint64_t number, wire, length;
    size_t offset = 0;
    if (!reader.Field(&number, &wire, &length, &offset)) return false;
    if (wire != 2) continue;
    std::string text(reinterpret_cast<const char*>(data + offset), length);
    if (number == 1) header->first = std::move(text);
    if (number == 2) value = std::move(text);
    if (number == 3) binary = std::move(text);
  }
  header->second = IsBinaryHeader(header->first) ? binary : value;
  return true;
}

// The frames of a ReplyBatch; false when it is not one.
inline bool ParseReplyBatch(const uint8_t* data, size_t size, std::vector<ReplyFrame>* frames) {
  Reader batch(data, size);
  while (!batch.done()) {
    uint64_t number, wire, length;
    size_t offset = 0;
    if (!batch.Field(&number, &wire, &length, &offset)) return false;
    if (number != 1 || wire != 2) continue;
    ReplyFrame frame;
    Reader reader(data + offset, length);
    while (!reader.done()) {
      uint64_t field, type, value;
      size_t at = 0;
      if (!reader.Field(&field, &type, &value, &at)) return false;
      const uint8_t* bytes = data + offset + at;
      if (field == 1 && type == 0) frame.id = value;
      if (field == 3 && type == 0) frame.code = static_cast<int>(value);
      if (field == 2 && type == 2) {
        frame.body_offset = offset + at;
        frame.body_size = value;
      }
      if (field == 4 && type == 2) frame.message.assign(reinterpret_cast<const char*>(bytes), value);
      if (field == 5 && type == 2) {
        std::pair<std::string, std::string> header;
        if (!ParseHeader(bytes, value, &header)) return false;
        frame.trailing.push_back(std::move(header));
      }
    }
    frames->push_back(std::move(frame));
  }
  return true;
}

}  // namespace meshserve
