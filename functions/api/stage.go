package main

import (
	"net/http"
	"strings"

	"github.com/awslabs/aws-lambda-go-api-proxy/core"
)

// withStagePrefix makes Location headers right behind API Gateway's default
// endpoint (https://<id>.execute-api.<region>.amazonaws.com/<stage>/...,
// amazonaws.com.cn in the China regions), where every path a client sees
// starts with the stage, which the handler never sees. Behind a custom
// domain the paths are left alone.
func withStagePrefix(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc, ok := core.GetAPIGatewayContextFromContext(r.Context())
		if ok && rc.Stage != "" && defaultEndpoint(r.Host) {
			w = &stageWriter{ResponseWriter: w, prefix: "/" + rc.Stage}
		}
		next.ServeHTTP(w, r)
	})
}

type stageWriter struct {
	http.ResponseWriter
	prefix string
	wrote  bool
}

func (s *stageWriter) WriteHeader(code int) {
	if s.wrote {
		return
	}
	s.wrote = true
	if loc := s.Header().Get("Location"); strings.HasPrefix(loc, "/") {
		s.Header().Set("Location", s.prefix+loc)
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *stageWriter) Write(b []byte) (int, error) {
	s.WriteHeader(http.StatusOK)
	return s.ResponseWriter.Write(b)
}

// defaultEndpoint reports whether host is API Gateway's own name for a REST
// API in any partition.
func defaultEndpoint(host string) bool {
	return strings.Contains(host, ".execute-api.") &&
		(strings.HasSuffix(host, ".amazonaws.com") || strings.HasSuffix(host, ".amazonaws.com.cn"))
}
