import CNGHTTP2

// Every nghttp2 callback, in one place: non-capturing trampolines that recover the session from
// `user_data` (without retaining it) and call one method. The callback table is immutable.

@inline(__always)
private func with<R>(_ user: UnsafeMutableRawPointer?, _ body: (HTTP2Session) -> R) -> R {
    Unmanaged<HTTP2Session>.fromOpaque(user!)._withUnsafeGuaranteedRef(body)
}

private func makeCallbacks() -> OpaquePointer {
    var cbs: OpaquePointer?
    nghttp2_session_callbacks_new(&cbs)
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs) { _, frame, user in
        with(user) { s in
            s.headerTarget = nil   // the delegate may hand over the new block's storage (`collectHeaders`)
            s.withDelegate(()) { $0.h2BeginHeaders(s, stream: frame!.pointee.hd.stream_id) }
        }
        return 0
    }
    nghttp2_session_callbacks_set_on_header_callback(cbs) { _, frame, name, namelen, value, valuelen, _, user in
        with(user) { s in
            let stream = frame!.pointee.hd.stream_id
            let n = UnsafeRawBufferPointer(start: name, count: namelen), v = UnsafeRawBufferPointer(start: value, count: valuelen)
            let ok = s.collect(stream: stream, n, v) ?? s.withDelegate(false) { $0.h2Header(s, stream: stream, name: n, value: v) }
            return ok ? 0 : Int32(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue)   // resets the stream
        }
    }
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs) { _, frame, user in
        with(user) { $0.frameReceived(frame!) }
    }
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs) { _, _, stream, data, len, user in
        with(user) { s in s.withDelegate(()) { $0.h2Data(s, stream: stream, data: UnsafeRawBufferPointer(start: data, count: len)) } }
        return 0
    }
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs) { _, stream, code, user in
        with(user) { s in
            if s.headerStream == stream { s.headerTarget = nil }
            s.withDelegate(()) { $0.h2StreamClosed(s, stream: stream, errorCode: code) }
        }
        return 0
    }
    return cbs!
}

nonisolated(unsafe) let h2Callbacks = makeCallbacks()

let h2ReadCallback: nghttp2_data_source_read_callback = { _, stream, buf, length, flags, _, user in
    with(user) { $0.readBody(stream, buf!, length, flags!) }
}
