package main

import (
	"net/http"
	"strings"

	"github.com/awslabs/aws-lambda-go-api-proxy/core"
)

// withPathPrefix makes paths right whatever address the client used.
//
// Behind API Gateway's default endpoint
// (https://<id>.execute-api.<region>.amazonaws.com/<stage>/...,
// amazonaws.com.cn in the China regions) every path a client sees starts
// with the stage, which the handler never sees: Location headers get it in
// front.
//
// Behind a custom domain that maps the API under basePath (API_BASE_PATH),
// API Gateway passes the base path in the request's path: it is stripped
// before routing, and Location headers get it back. A path outside it is
// left alone, for the 404 of the routes.
func withPathPrefix(next http.Handler, basePath string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc, ok := core.GetAPIGatewayContextFromContext(r.Context())
		switch {
		case ok && rc.Stage != "" && defaultEndpoint(r.Host):
			w = &prefixWriter{ResponseWriter: w, prefix: "/" + rc.Stage}
		case basePath != "":
			if rest, found := strings.CutPrefix(r.URL.Path, basePath); found && (rest == "" || rest[0] == '/') {
				r2 := *r
				u := *r.URL
				u.Path = "/" + strings.TrimPrefix(rest, "/")
				u.RawPath = ""
				r2.URL = &u
				r = &r2
				w = &prefixWriter{ResponseWriter: w, prefix: basePath}
			}
		}
		next.ServeHTTP(w, r)
	})
}

type prefixWriter struct {
	http.ResponseWriter
	prefix string
	wrote  bool
}

func (s *prefixWriter) WriteHeader(code int) {
	if s.wrote {
		return
	}
	s.wrote = true
	if loc := s.Header().Get("Location"); strings.HasPrefix(loc, "/") {
		s.Header().Set("Location", s.prefix+loc)
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *prefixWriter) Write(b []byte) (int, error) {
	s.WriteHeader(http.StatusOK)
	return s.ResponseWriter.Write(b)
}

// defaultEndpoint reports whether host is API Gateway's own name for a REST
// API in any partition, its dual-stack (IPv6) name included.
func defaultEndpoint(host string) bool {
	return strings.Contains(host, ".execute-api.") &&
		(strings.HasSuffix(host, ".amazonaws.com") || strings.HasSuffix(host, ".amazonaws.com.cn") || strings.HasSuffix(host, ".api.aws"))
}
